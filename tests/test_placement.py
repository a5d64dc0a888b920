"""Evacuation placement: capacity is never exceeded, load is balanced, policies are honoured."""

from __future__ import annotations

import random

from orchestrator.evacuation.placement import MIGRATE, SKIP, STAY, STOP, Candidate, TargetHost, plan

MiB = 1024 * 1024


def test_balances_by_load_and_respects_capacity():
    cands = [Candidate(f"c{i}", 10 * MiB, running=i % 2 == 0) for i in range(10)]
    targets = [TargetHost("bar", free=1000 * MiB), TargetHost("baz", free=1000 * MiB, containers=4)]
    placed = plan(cands, targets)
    counts = {t: sum(1 for p in placed if p.target == t) for t in ("bar", "baz")}
    assert counts == {"bar": 7, "baz": 3}  # 0+7 vs 4+3: equal load afterwards
    assert all(p.action == MIGRATE and p.method == "rsync" for p in placed)


def test_never_over_capacity_and_too_big_stays():
    cands = [
        Candidate("huge", 500 * MiB, True),
        Candidate("a", 60 * MiB, True),
        Candidate("b", 60 * MiB, False),
    ]
    targets = [TargetHost("bar", free=100 * MiB), TargetHost("baz", free=70 * MiB)]
    placed = {p.container: p for p in plan(cands, targets)}
    assert placed["huge"].action == STAY and "MiB free" in placed["huge"].reason
    assert {placed["a"].target, placed["b"].target} == {"bar", "baz"}


def test_random_plans_never_exceed_free_space():
    rng = random.Random(7)
    for _ in range(200):
        cands = [
            Candidate(f"c{i}", rng.randint(1, 50) * MiB, rng.random() < 0.5)
            for i in range(rng.randint(1, 15))
        ]
        targets = [
            TargetHost(f"t{j}", free=rng.randint(0, 200) * MiB, jobs=rng.randint(0, 3)) for j in range(3)
        ]
        free = {t.remote: t.free for t in targets}
        for p in plan(cands, targets):
            if p.action == MIGRATE:
                free[p.target] -= int(p.size * 1.05)
        assert all(v >= 0 for v in free.values())


def test_policies_and_override():
    cands = [
        Candidate("keep", MiB, True, policy=SKIP),
        Candidate("halt", MiB, True, policy=STOP),
        Candidate("go", MiB, True, policy="auto"),
    ]
    placed = {p.container: p.action for p in plan(cands, [TargetHost("bar", free=100 * MiB)])}
    assert placed == {"keep": SKIP, "halt": STOP, "go": MIGRATE}
    overridden = {
        p.container: p.action for p in plan(cands, [TargetHost("bar", free=100 * MiB)], override=STOP)
    }
    assert set(overridden.values()) == {STOP}


def test_no_targets_and_fits_nowhere_with_stop_policy():
    placed = plan([Candidate("a", MiB, True), Candidate("b", MiB, True, policy=STOP)], [])
    assert [(p.action, p.reason) for p in placed] == [
        (STAY, "no target host available"),
        (STOP, "policy stop"),
    ]


def test_btrfs_preferred_when_both_sides_have_it():
    targets = [TargetHost("bar", free=100 * MiB, methods=("btrfs", "rsync", "tar"))]
    [p] = plan([Candidate("a", MiB, False)], targets, source_methods=("btrfs", "rsync", "tar"))
    assert p.method == "btrfs"
