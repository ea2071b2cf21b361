"""Data: synthetic audio reasoning tasks (``tasks``), the item format (``items``), chat prompts and completion parsing
(``prompts``), and batching into model inputs (``collate``)."""
