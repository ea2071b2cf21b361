"""The GRPO loss, KL and advantage functions against hand-computed values on small tensors (no model)."""

import math

import pytest
import torch

from rl.train.grpo import compute_advantages, grpo_loss, k3_kl, lr_factor, nanstd
from rl.train.rollout import eos_mask

EPS = 1e-4  # the advantage functions' std offset


def close(a, b, tol=1e-5):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32),
                          atol=tol, rtol=tol)


# --- aggregations --------------------------------------------------------------------------------------------------
# Ratio 1 (logp == old_logp): every token's loss is -A. Sequence 0 has 3 tokens with A = +1, sequence 1 has 1 token
# with A = -2 (T = 4).
MASK = torch.tensor([[1.0, 1, 1, 0], [1, 0, 0, 0]])
ADV = torch.tensor([1.0, -2.0])


def _logp():
    return torch.log(torch.tensor([[0.5, 0.2, 0.1, 0.9], [0.3, 0.4, 0.6, 0.7]])).requires_grad_(True)


@pytest.mark.parametrize("loss_type, expected, grads", [
    # grpo: per-sequence means (-1, +2), then their mean: 0.5; d/dlogp = -A / (n_tokens_i * n_seq)
    ("grpo", 0.5, [[-1 / 6, -1 / 6, -1 / 6, 0], [1.0, 0, 0, 0]]),
    # dapo: token sum (-3 + 2) / 4 tokens
    ("dapo", -0.25, [[-0.25, -0.25, -0.25, 0], [0.5, 0, 0, 0]]),
    # dr_grpo: token sum / (2 sequences * T = 4)
    ("dr_grpo", -1 / 8, [[-1 / 8, -1 / 8, -1 / 8, 0], [0.25, 0, 0, 0]]),
])
def test_aggregations(loss_type, expected, grads):
    logp = _logp()
    loss, stats = grpo_loss(logp, logp.detach(), ADV, MASK, loss_type=loss_type)
    assert close(loss, expected)
    loss.backward()
    assert close(logp.grad, grads)
    assert stats["tokens"] == 4 and stats["clip_region"] == 0 and stats["kl"] == 0


def test_dr_grpo_uses_max_completion_length():
    logp = _logp()
    loss, _ = grpo_loss(logp, logp.detach(), ADV, MASK, loss_type="dr_grpo", max_completion_length=8)
    assert close(loss, -1 / 16)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_chunks_with_global_denominators_add_up_to_the_batch_loss(loss_type):
    """Gradient accumulation: chunk losses with the whole batch's denominators sum to the whole batch's loss."""
    torch.manual_seed(0)
    logp, old = torch.randn(5, 6) - 2, torch.randn(5, 6) - 2
    adv, mask = torch.randn(5), (torch.rand(5, 6) > 0.3).float()
    full, _ = grpo_loss(logp, old, adv, mask, loss_type=loss_type, max_completion_length=6)
    parts = [grpo_loss(logp[s], old[s], adv[s], mask[s], loss_type=loss_type, max_completion_length=6,
                       num_sequences=5, num_tokens=mask.sum())[0] for s in (slice(0, 2), slice(2, 5))]
    assert close(sum(parts), full)


def test_masked_tokens_do_not_count():
    logp = _logp()
    old = logp.detach().clone()
    old[0, 3] = -50.0  # a huge ratio on a padding position must change nothing
    loss, stats = grpo_loss(logp, old, ADV, MASK, loss_type="dapo", epsilon=0.2)
    assert close(loss, -0.25) and stats["clip_region"] == 0


# --- clipping ------------------------------------------------------------------------------------------------------
# One token, epsilon = 0.2 (low), epsilon_high = 0.28: loss = -min(rho * A, clip(rho, 0.8, 1.28) * A).
@pytest.mark.parametrize("ratio, adv, loss, grad, low, high", [
    (1.5, 1.0, -1.28, 0.0, 0, 1),   # A > 0 above 1 + eps_high: clipped, no gradient
    (1.25, 1.0, -1.25, -1.25, 0, 0),  # inside [0.8, 1.28] (would be clipped with a symmetric 0.2)
    (0.5, 1.0, -0.5, -0.5, 0, 0),   # A > 0 below 1 - eps: unclipped side is the minimum, gradient flows
    (0.5, -1.0, 0.8, 0.0, 1, 0),    # A < 0 below 1 - eps: clipped, no gradient
    (1.5, -1.0, 1.5, 1.5, 0, 0),    # A < 0 above 1 + eps_high: the unclipped (pessimistic) term wins
    (0.7, -2.0, 1.6, 0.0, 1, 0),    # clipped at 0.8 times A = -2
])
def test_clipping_both_epsilons(ratio, adv, loss, grad, low, high):
    old = torch.tensor([[math.log(0.4)]])
    logp = (old + math.log(ratio)).requires_grad_(True)
    out, stats = grpo_loss(logp, old, torch.tensor([adv]), torch.ones(1, 1), epsilon=0.2, epsilon_high=0.28,
                           loss_type="dapo")
    out.backward()
    assert close(out, loss)
    assert close(logp.grad, [[grad]])  # d/dlogp of -rho * A is -rho * A
    assert (stats["clip_low"], stats["clip_high"], stats["clip_region"]) == (low, high, low + high)


def test_epsilon_high_defaults_to_epsilon():
    old = torch.zeros(1, 1)
    logp = old + math.log(1.25)
    loss, stats = grpo_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 1), epsilon=0.2, loss_type="dapo")
    assert close(loss, -1.2) and stats["clip_high"] == 1


# --- k3 KL ---------------------------------------------------------------------------------------------------------

def test_k3_kl_values():
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.3]]))
    ref = torch.log(torch.tensor([[0.25, 0.5, 0.3]]))
    # d = ref - logp: ln 0.5 -> 0.5 - ln 0.5 - 1; ln 2 -> 2 - ln 2 - 1; 0 -> 0
    assert close(k3_kl(logp, ref), [[0.5 + math.log(2) - 1, 2 - math.log(2) - 1, 0.0]])


def test_k3_kl_is_clamped():
    logp, ref = torch.tensor([[-30.0, 0.0]]), torch.tensor([[0.0, -30.0]])
    # d = +30 -> clamped to 10: e^10 - 11; d = -30 -> -10: e^-10 + 9
    assert close(k3_kl(logp, ref), [[math.exp(10) - 11, math.exp(-10) + 9]], tol=1e-4)
    assert torch.isfinite(k3_kl(logp, ref)).all()


def test_kl_term_in_the_loss():
    logp = torch.log(torch.tensor([[0.5, 0.25]])).requires_grad_(True)
    ref = torch.log(torch.tensor([[0.25, 0.5]]))
    loss, stats = grpo_loss(logp, logp.detach(), torch.zeros(1), torch.ones(1, 2), ref_logp=ref, beta=0.1,
                            loss_type="dapo")
    kl = [0.5 + math.log(2) - 1, 1 - math.log(2)]
    assert close(loss, 0.1 * sum(kl) / 2)
    assert close(stats["kl"], sum(kl))
    loss.backward()
    # d k3 / d logp = 1 - exp(ref - logp): 1 - 0.5 and 1 - 2; times beta / 2 tokens
    assert close(logp.grad, [[0.1 * 0.5 / 2, 0.1 * -1.0 / 2]])
    # beta = 0: the reference is ignored
    loss0, _ = grpo_loss(logp, logp.detach(), torch.zeros(1), torch.ones(1, 2), ref_logp=ref, beta=0.0)
    assert loss0 == 0


# --- advantages ----------------------------------------------------------------------------------------------------
# Two groups of G = 3, one reward: group 0 = (1, 0, 0) (mean 1/3, unbiased std sqrt(1/3)), group 1 = (1, 1, 1).
R1 = torch.tensor([[1.0], [0.0], [0.0], [1.0], [1.0], [1.0]])
W1 = torch.tensor([1.0])


def test_advantages_group():
    adv, zero = compute_advantages(R1, W1, 3, scale="group")
    s = math.sqrt(1 / 3) + EPS
    assert close(adv, [(2 / 3) / s, (-1 / 3) / s, (-1 / 3) / s, 0, 0, 0])
    assert zero == 1


def test_advantages_batch():
    adv, zero = compute_advantages(R1, W1, 3, scale="batch")
    # all six rewards: mean 2/3, squared deviations sum to 12/9, unbiased variance 12/9 / 5 = 4/15
    s = math.sqrt(4 / 15) + EPS
    assert close(adv, [(2 / 3) / s, (-1 / 3) / s, (-1 / 3) / s, 0, 0, 0])
    assert zero == 1


def test_advantages_none():
    adv, zero = compute_advantages(R1, W1, 3, scale="none")
    assert close(adv, [2 / 3, -1 / 3, -1 / 3, 0, 0, 0]) and zero == 1


# Two rewards on one group of 3, very different scales: r1 = (1, 0, 0), r2 = (0, 0, 3), weights (1, 0.5).
R2 = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 3.0]])
W2 = torch.tensor([1.0, 0.5])


def test_sum_then_normalise():
    adv, _ = compute_advantages(R2, W2, 3, scale="none", aggregation="sum_then_normalize")
    # combined (1, 0, 1.5), mean 5/6
    assert close(adv, [1 / 6, -5 / 6, 4 / 6])
    adv, _ = compute_advantages(R2, W2, 3, scale="group", aggregation="sum_then_normalize")
    std = math.sqrt(((1 / 6) ** 2 + (5 / 6) ** 2 + (4 / 6) ** 2) / 2)
    assert close(adv, [(1 / 6) / (std + EPS), (-5 / 6) / (std + EPS), (4 / 6) / (std + EPS)])


def test_gdpo_normalises_each_reward_first():
    adv, zero = compute_advantages(R2, W2, 3, scale="none", aggregation="normalize_then_sum")
    s1, s2 = math.sqrt(1 / 3) + EPS, math.sqrt(3) + EPS  # r1: mean 1/3; r2: mean 1, std sqrt(((-1)^2*2 + 2^2)/2)
    n1 = [(2 / 3) / s1, (-1 / 3) / s1, (-1 / 3) / s1]
    n2 = [-1 / s2, -1 / s2, 2 / s2]
    combined = [a + 0.5 * b for a, b in zip(n1, n2)]
    mean = sum(combined) / 3
    assert close(adv, [c - mean for c in combined])
    assert zero == 0
    # the large-scale reward no longer dominates: with "sum" the third completion is best, with gdpo the first
    assert adv.argmax() == 0
    assert compute_advantages(R2, W2, 3, scale="none", aggregation="sum_then_normalize")[0].argmax() == 2


def test_gdpo_then_group_scaling():
    adv_none, _ = compute_advantages(R2, W2, 3, scale="none", aggregation="normalize_then_sum")
    adv_group, _ = compute_advantages(R2, W2, 3, scale="group", aggregation="normalize_then_sum")
    assert close(adv_group, adv_none / (nanstd(adv_none) + EPS))


def test_none_rewards_are_ignored():
    # group of 3; reward 2 does not apply (NaN) to rows 0-1; row 2 has no applicable reward at all
    r = torch.tensor([[1.0, math.nan], [0.0, math.nan], [math.nan, math.nan]])
    adv, zero = compute_advantages(r, torch.tensor([1.0, 1.0]), 3, scale="none")
    # row 2 is out of the baseline (mean of 1 and 0) and gets advantage 0
    assert close(adv, [0.5, -0.5, 0.0])
    assert zero == 0


@pytest.mark.parametrize("aggregation", ["sum_then_normalize", "normalize_then_sum"])
@pytest.mark.parametrize("scale", ["group", "none"])
def test_a_failed_judgement_is_left_out_as_if_never_sampled(aggregation, scale):
    """Completion 2 of group 0 has a failed judgement (NaN in the judge column; its accuracy is known). Its advantage
    is 0 and every other advantage equals a run where that completion is absent: never trained as a 0 score."""
    g = torch.Generator().manual_seed(0)
    acc_col = torch.randint(0, 2, (8, 1), generator=g).float()
    judge_col = torch.rand((8, 1), generator=g)
    judge_col[5] = torch.nan  # not applicable (a wrong answer is not judged): stays in, like TRL
    rewards, weights = torch.cat([acc_col, judge_col], 1), torch.tensor([1.0, 0.5])
    failed = torch.zeros(8, dtype=torch.bool)
    failed[2] = True
    rewards[2, 1] = torch.nan
    adv, _ = compute_advantages(rewards, weights, 4, scale=scale, aggregation=aggregation, failed=failed)
    absent0, _ = compute_advantages(rewards[[0, 1, 3]], weights, 3, scale=scale, aggregation=aggregation)
    absent1, _ = compute_advantages(rewards[4:], weights, 4, scale=scale, aggregation=aggregation)
    assert adv[2] == 0
    assert close(adv[[0, 1, 3]], absent0) and close(adv[4:], absent1)
    as_zero = rewards.clone()
    as_zero[2, 1] = 0.0  # what "sum" used to do with a failure: a 0 score
    assert not close(compute_advantages(as_zero, weights, 4, scale=scale, aggregation=aggregation)[0][[0, 1, 3]],
                     absent0)


def test_zero_variance_groups_are_counted():
    r = torch.tensor([[1.0], [1.0], [0.0], [0.0], [1.0], [0.0], [0.5], [0.5]])
    adv, zero = compute_advantages(r, W1, 2, scale="group")
    assert zero == 3
    assert close(adv[[0, 1, 2, 3, 6, 7]], torch.zeros(6))


def test_advantage_errors():
    with pytest.raises(ValueError, match="groups of 4"):
        compute_advantages(R1, W1, 4)
    with pytest.raises(ValueError, match="scale"):
        compute_advantages(R1, W1, 3, scale="global")
    with pytest.raises(ValueError, match="aggregation"):
        compute_advantages(R1, W1, 3, aggregation="max")
    with pytest.raises(ValueError, match="loss_type"):
        grpo_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1), torch.ones(1, 1), loss_type="ppo")


# --- masks and schedules -------------------------------------------------------------------------------------------

def test_eos_mask():
    ids = torch.tensor([[5, 6, 2, 0, 0], [5, 2, 2, 7, 0], [5, 6, 7, 8, 9]])
    mask, truncated = eos_mask(ids, eos_token_id=2)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert truncated.tolist() == [False, False, True]


def test_lr_factor():
    f = lambda u, s: lr_factor(u, schedule=s, warmup=2, total=6, min_ratio=0.0)  # noqa: E731
    assert [f(u, "constant") for u in range(4)] == [0.5, 1.0, 1.0, 1.0]
    assert close([f(u, "linear") for u in range(2, 7)], [1.0, 0.75, 0.5, 0.25, 0.0])
    assert close([f(u, "cosine") for u in (2, 4, 6)], [1.0, 0.5, 0.0])
    assert close(lr_factor(6, schedule="cosine", warmup=0, total=6, min_ratio=0.1), 0.1)
