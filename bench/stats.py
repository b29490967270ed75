"""The kaizen loop's decisions on simulated experiments (`make bench-stats`).

The efficacy stage as the product runs it: 20 looks, 100 more tasks per arm each,
up to 2,000 per arm, Bernoulli successes, every look decided by
`experiments.stats.evaluate_many`, the vectorised core of `evaluate` (the
function the product calls), with the same history of looks the product would
pass. A sample of the experiments is replayed look by look through `evaluate`
itself, and the run fails if a single decision differs.

Each scenario's first decision is its outcome: promote, roll back, futility (the
non-binding early stop) or the end at 2,000 per arm without a crossing. Beside
it, a naive z-test at every look (promote at z >= 1.96, roll back at z <= -1.96,
from 100 per arm, the same z). The tasks are split exactly evenly between the
arms, so the sample-ratio check never fires here.

Then the replay gate (issue 13, `replay_gate`): replays of a prompt change on
`experiments.paired.replay_sample_size()` pairs, the pass counts drawn from a
multinomial, decided by `experiments.paired.noninferiority_p_many` (the vectorised
core of the gate's test), in two scenarios: the versions truly equal, and the
candidate truly 5 points worse; a sample of them replayed through `replay_stats`
itself; and `mcnemar_exact_p` against scipy's binomtest on random tables.
`--skip-replay-gate` leaves it out, `--only-replay-gate` runs nothing else.

Prints one ``name=value`` line per figure. Fixed seed: the same run prints the
same figures. Exits non-zero when a target is missed.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats as scipy_stats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments import paired, stats  # noqa: E402

LOOKS = 20
MAX_N = 2000
STEP = MAX_N // LOOKS
FRACTIONS = tuple((k + 1) / LOOKS for k in range(LOOKS))
NAIVE_Z = 1.96
# name: (control success rate, treatment success rate)
SCENARIOS = {"aa": (0.70, 0.70), "70_78": (0.70, 0.78), "70_62": (0.70, 0.62), "70_74": (0.70, 0.74)}
# The figures' names: (the share promoted, the share rolled back).
FIGURE_NAMES = {
    "aa": ("aa_false_promotion", "aa_false_rollback"),
    "70_78": ("power_70_78", "rollback_70_78"),
    "70_62": ("promote_70_62", "rollback_70_62"),
    "70_74": ("power_70_74", "rollback_70_74"),
}
CHUNK = 100_000


def simulate(
    p_control: float, p_treatment: float, experiments: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Decisions and z of each experiment at each look (rows: experiments)."""
    decision = np.empty((experiments, LOOKS), dtype=np.int8)
    z = np.empty((experiments, LOOKS))
    successes = {}
    for start in range(0, experiments, CHUNK):
        rows = slice(start, min(start + CHUNK, experiments))
        size = (rows.stop - rows.start, LOOKS)
        s_c = rng.binomial(STEP, p_control, size).cumsum(axis=1)
        s_t = rng.binomial(STEP, p_treatment, size).cumsum(axis=1)
        if start == 0:
            successes = {"control": s_c, "treatment": s_t}
        for k in range(LOOKS):
            n = np.full(size[0], (k + 1) * STEP)
            out = stats.evaluate_many(
                "efficacy", n, s_c[:, k], n, s_t[:, k], history=FRACTIONS[:k], max_n=MAX_N
            )
            decision[rows, k] = out.decision
            z[rows, k] = out.z
    return {"decision": decision, "z": z, **successes}


def first_stop(decided: np.ndarray) -> np.ndarray:
    """Index of each row's first True look (LOOKS - 1 if none)."""
    return np.where(decided.any(axis=1), decided.argmax(axis=1), LOOKS - 1)


def outcomes(decision: np.ndarray) -> dict[str, float]:
    rows = np.arange(len(decision))
    stop = first_stop(decision != stats.CONTINUE)
    outcome = decision[rows, stop]
    # Non-binding futility: what the same experiments would give if futility stops were ignored.
    binding = first_stop((decision == stats.PROMOTE) | (decision == stats.ROLLBACK))
    ignoring = decision[rows, binding]
    return {
        "promote": np.mean(outcome == stats.PROMOTE),
        "rollback": np.mean(outcome == stats.ROLLBACK),
        "futility": np.mean((outcome == stats.FUTILITY) & (stop < LOOKS - 1)),
        "max_reached": np.mean(
            ((outcome == stats.FUTILITY) | (outcome == stats.CONTINUE)) & (stop == LOOKS - 1)
        ),
        "mean_n_per_arm": np.mean((stop + 1) * STEP),
        "promote_ignoring_futility": np.mean(ignoring == stats.PROMOTE),
    }


def naive_outcomes(z: np.ndarray) -> dict[str, float]:
    rows = np.arange(len(z))
    stop = first_stop(np.abs(z) >= NAIVE_Z)
    at_stop = z[rows, stop]
    return {
        "promote": np.mean(at_stop >= NAIVE_Z),
        "rollback": np.mean(at_stop <= -NAIVE_Z),
        "max_reached": np.mean(np.abs(at_stop) < NAIVE_Z),
        "mean_n_per_arm": np.mean((stop + 1) * STEP),
    }


def replay_with_evaluate(result: dict[str, np.ndarray], count: int) -> tuple[int, float]:
    """Replays the first `count` experiments through `evaluate`, look by look as the
    product would, stopping at the first decision; returns how many ended
    differently from the vectorised run, and evaluate's mean time per call."""
    mismatches = calls = 0
    started = time.perf_counter()
    vector_stop = first_stop(result["decision"][:count] != stats.CONTINUE)
    for i in range(count):
        history: list[float] = []
        for k in range(LOOKS):
            n = (k + 1) * STEP
            look = stats.evaluate(
                "efficacy",
                stats.ArmCounts(n, int(result["control"][i, k])),
                stats.ArmCounts(n, int(result["treatment"][i, k])),
                history=tuple(history),
                max_n=MAX_N,
            )
            calls += 1
            history.append(look.fraction)
            if look.decision != "continue" or k == LOOKS - 1:
                break
        expected = stats.DECISIONS[result["decision"][i, vector_stop[i]]]
        mismatches += (look.decision, k) != (expected, vector_stop[i])
    return mismatches, (time.perf_counter() - started) / calls


# The replay gate's scenarios: name: (P(both pass), P(only baseline), P(only candidate),
# P(neither)). A baseline that passes 80%; the versions disagree on
# DEFAULT_DISCORDANCE = 15% of the pairs (the planning assumption); the candidate
# passes 80% ("at_0") or 75% ("at_drop5", a drop of exactly the margin).
REPLAY_GATE_SCENARIOS = {
    "at_0": (0.725, 0.075, 0.075, 0.125),
    "at_drop5": (0.70, 0.10, 0.05, 0.15),
}
REPLAY_GATE_PASS_AT_0 = 0.95  # DEFAULT_POWER: equal versions pass at least this often
REPLAY_GATE_FAIL_AT_DROP5 = 0.90  # a 5-point drop fails at least this often
MCNEMAR_TOLERANCE = 1e-12


def replay_gate_pairs(counts: np.ndarray, rng: np.random.Generator) -> list[paired.Pair]:
    """Pairs with these pass counts (both, only baseline, only candidate, neither) and
    measures that vary by task alike on both versions (no guardrail should move)."""
    outcomes = np.repeat(np.arange(4), counts)
    size = rng.gamma(4.0, 0.25, size=len(outcomes))
    noise = rng.normal(1.0, 0.1, size=(6, len(outcomes)))
    return [
        paired.Pair(
            baseline_pass=bool(o in (0, 1)),
            candidate_pass=bool(o in (0, 2)),
            baseline_cost=0.01 * size[i] * noise[0, i],
            candidate_cost=0.01 * size[i] * noise[1, i],
            baseline_latency_ms=1500 * size[i] * noise[2, i],
            candidate_latency_ms=1500 * size[i] * noise[3, i],
            baseline_tokens=round(800 * size[i] * noise[4, i]),
            candidate_tokens=round(800 * size[i] * noise[5, i]),
        )
        for i, o in enumerate(outcomes)
    ]


def replay_gate(replays: int, through_replay_stats: int, seed: int) -> bool:
    """Simulated replays of the gate at its default sample size; True when every target
    holds and replay_stats agrees with the vectorised test on every sampled replay."""
    started = time.perf_counter()
    n = paired.replay_sample_size()
    print(f"replay_gate_sample_size={n}")
    print(f"replay_gate_replays={replays}")
    print(f"replay_gate_discordance={paired.DEFAULT_DISCORDANCE}")
    print(f"replay_gate_margin={paired.DEFAULT_MARGIN}")
    print(f"replay_gate_alpha={paired.DEFAULT_ALPHA}")
    print(f"replay_gate_planned_power={paired.achieved_power(n):.4f}")

    shares = {}
    mismatches = checked = 0
    stats_s = 0.0
    for index, (name, cells) in enumerate(REPLAY_GATE_SCENARIOS.items()):
        rng = np.random.default_rng([seed, 13, index])
        counts = rng.multinomial(n, cells, size=replays)
        p = paired.noninferiority_p_many(np.full(replays, n), counts[:, 1], counts[:, 2])
        passed = p < paired.DEFAULT_ALPHA
        shares[name] = float(np.mean(passed))
        call_started = time.perf_counter()
        for i in range(min(through_replay_stats, replays)):
            verdict = paired.replay_stats(replay_gate_pairs(counts[i], rng), seed=i).verdict
            mismatches += verdict != ("pass" if passed[i] else "fail")
            checked += 1
        stats_s += time.perf_counter() - call_started
    print(f"replay_gate_pass_at_0={shares['at_0']:.4f}")
    print(f"replay_gate_fail_at_drop5={1 - shares['at_drop5']:.4f}")
    print(f"replay_gate_monte_carlo_se_at_0_95={math.sqrt(0.95 * 0.05 / replays):.4f}")
    print(f"replay_gate_replayed_through_replay_stats={checked}")
    print(f"replay_gate_verdict_mismatches={mismatches}")
    if checked:
        print(f"replay_gate_stats_ms_per_call={stats_s / checked * 1000:.1f}")

    # Random tables: discordant pairs from 1 to 2,000 (binomtest needs at least one),
    # split anywhere.
    rng = np.random.default_rng([seed, 13, 99])
    discordant = rng.integers(1, 2001, size=2000)
    only_candidate = rng.integers(0, discordant + 1)
    worst = max(
        abs(paired.mcnemar_exact_p(int(d - c), int(c)) - scipy_stats.binomtest(int(c), int(d), 0.5).pvalue)
        for d, c in zip(discordant, only_candidate, strict=True)
    )
    print(f"replay_gate_mcnemar_tables={len(discordant)}")
    print(f"replay_gate_mcnemar_max_abs_diff={worst:.3g}")
    print(f"replay_gate_elapsed_s={time.perf_counter() - started:.1f}")
    return (
        shares["at_0"] >= REPLAY_GATE_PASS_AT_0
        and 1 - shares["at_drop5"] >= REPLAY_GATE_FAIL_AT_DROP5
        and worst <= MCNEMAR_TOLERANCE
        and paired.mcnemar_exact_p(0, 0) == 1.0
        and not mismatches
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--experiments", type=int, default=1_000_000, help="simulated experiments per scenario"
    )
    parser.add_argument(
        "--replay", type=int, default=500, help="experiments per scenario replayed through evaluate()"
    )
    parser.add_argument("--seed", type=int, default=20260105)
    parser.add_argument("--skip-replay-gate", action="store_true", help="leave out the replay gate")
    parser.add_argument("--only-replay-gate", action="store_true", help="run the replay gate alone")
    parser.add_argument(
        "--replay-gate-replays", type=int, default=20_000, help="simulated replays per replay-gate scenario"
    )
    parser.add_argument(
        "--replay-gate-stats",
        type=int,
        default=100,
        help="replays per replay-gate scenario also decided by replay_stats()",
    )
    args = parser.parse_args()

    def run_replay_gate() -> bool:
        return replay_gate(args.replay_gate_replays, args.replay_gate_stats, args.seed)

    if args.only_replay_gate:
        return 0 if run_replay_gate() else 1

    started = time.perf_counter()
    print(f"experiments_per_scenario={args.experiments}")
    print(f"looks={LOOKS}")
    print(f"max_n_per_arm={MAX_N}")
    print(f"alpha={stats.ALPHA}")
    print(f"alpha_harm={stats.ALPHA_HARM}")
    print(
        "efficacy_boundaries=" + ",".join(f"{c:.3f}" for c in stats.boundaries(FRACTIONS, "obf", stats.ALPHA))
    )
    print(
        "harm_boundaries="
        + ",".join(f"-{h:.3f}" for h in stats.boundaries(FRACTIONS, "pocock", stats.ALPHA_HARM))
    )

    mismatches = 0
    replay_s_per_call = []
    simulated_s = 0.0
    for index, (name, (p_c, p_t)) in enumerate(SCENARIOS.items()):
        rng = np.random.default_rng([args.seed, index])
        scenario_started = time.perf_counter()
        result = simulate(p_c, p_t, args.experiments, rng)
        simulated_s += time.perf_counter() - scenario_started
        seq, naive = outcomes(result["decision"]), naive_outcomes(result["z"])
        promote_name, rollback_name = FIGURE_NAMES[name]
        for prefix, figures in (("", seq), ("naive_", naive)):
            print(f"{prefix}{promote_name}={figures['promote']:.4f}")
            print(f"{prefix}{rollback_name}={figures['rollback']:.4f}")
            if "futility" in figures:
                print(f"{prefix}futility_{name}={figures['futility']:.4f}")
                print(f"{prefix}promote_ignoring_futility_{name}={figures['promote_ignoring_futility']:.4f}")
            print(f"{prefix}max_reached_{name}={figures['max_reached']:.4f}")
            print(f"{prefix}mean_n_per_arm_{name}={figures['mean_n_per_arm']:.1f}")
        wrong, per_call = replay_with_evaluate(result, min(args.replay, args.experiments))
        mismatches += wrong
        replay_s_per_call.append(per_call)

    # The binomial standard error of a rate near 0.025 (and the largest, at 0.5).
    print(f"monte_carlo_se_at_0_025={math.sqrt(0.025 * 0.975 / args.experiments):.5f}")
    print(f"monte_carlo_se_max={math.sqrt(0.25 / args.experiments):.5f}")
    print(f"replayed_through_evaluate={min(args.replay, args.experiments) * len(SCENARIOS)}")
    print(f"replay_mismatches={mismatches}")
    print(f"evaluate_us_per_call={np.mean(replay_s_per_call) * 1e6:.0f}")
    print(f"simulation_s={simulated_s:.1f}")
    print(f"elapsed_s={time.perf_counter() - started:.1f}")
    gate_holds = args.skip_replay_gate or run_replay_gate()
    return 1 if mismatches or not gate_holds else 0


if __name__ == "__main__":
    sys.exit(main())
