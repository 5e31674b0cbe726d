"""RFC 9162 proofs against a naive implementation written straight from the RFC's
recursive definitions (MTH, PATH, PROOF/SUBPROOF over lists of entries), over every
size 1..200 and random indices; and the verifiers refuse every altered proof."""

from __future__ import annotations

import hashlib
import random

import pytest

from gateway.audit._merkle import (
    EMPTY_ROOT,
    Frontier,
    Tree,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)


def h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def k_of(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(d: list[bytes]) -> bytes:
    if not d:
        return h(b"")
    if len(d) == 1:
        return h(b"\x00" + d[0])
    k = k_of(len(d))
    return h(b"\x01" + mth(d[:k]) + mth(d[k:]))


def path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = k_of(len(d))
    if m < k:
        return [*path(m, d[:k]), mth(d[k:])]
    return [*path(m - k, d[k:]), mth(d[:k])]


def subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    if m == len(d):
        return [] if b else [mth(d)]
    k = k_of(len(d))
    if m <= k:
        return [*subproof(m, d[:k], b), mth(d[k:])]
    return [*subproof(m - k, d[k:], False), mth(d[:k])]


def entries(n: int) -> list[bytes]:
    return [f'{{"事件":{i},"患者":"王伟"}}'.encode() for i in range(n)]


def test_roots_and_frontier_agree_with_mth_for_sizes_0_to_200() -> None:
    data = entries(200)
    frontier = Frontier()
    assert frontier.root() == EMPTY_ROOT == mth([])
    for n in range(1, 201):
        frontier = frontier.append(leaf_hash(data[n - 1]))
        assert len(frontier.hashes) == bin(n).count("1")
        expected = mth(data[:n])
        assert frontier.root() == expected
        assert Tree([leaf_hash(e) for e in data[:n]]).root() == expected


def test_inclusion_proofs_agree_with_path_and_verify() -> None:
    rng = random.Random(9162)
    data = entries(200)
    leaves = [leaf_hash(e) for e in data]
    tree = Tree(leaves)
    for n in range(1, 201):
        root = mth(data[:n])
        for m in {0, n - 1, rng.randrange(n), rng.randrange(n)}:
            proof = tree.inclusion_proof(m, n)
            assert proof == path(m, data[:n])
            assert verify_inclusion(leaves[m], m, n, proof, root)
            # any other leaf, index or root fails
            assert not verify_inclusion(leaf_hash(b"x"), m, n, proof, root)
            if n > 1:
                assert not verify_inclusion(leaves[m], (m + 1) % n, n, proof, root)
            assert not verify_inclusion(leaves[m], m, n, proof, h(b"other"))
            if proof:
                bad = list(proof)
                bad[rng.randrange(len(bad))] = h(b"tampered")
                assert not verify_inclusion(leaves[m], m, n, bad, root)
                assert not verify_inclusion(leaves[m], m, n, proof[:-1], root)
            assert not verify_inclusion(leaves[m], m, n, [*proof, h(b"extra")], root)


def test_consistency_proofs_agree_with_proof_and_verify() -> None:
    rng = random.Random(2)
    data = entries(200)
    tree = Tree([leaf_hash(e) for e in data])
    for n in range(1, 201):
        new_root = mth(data[:n])
        for m in {1, n, rng.randint(1, n), rng.randint(1, n)}:
            proof = tree.consistency_proof(m, n)
            assert proof == (subproof(m, data[:n], True) if m < n else [])
            old_root = mth(data[:m])
            assert verify_consistency(m, n, old_root, new_root, proof)
            assert not verify_consistency(m, n, h(b"rewritten"), new_root, proof)
            if m < n:
                assert not verify_consistency(m, n, old_root, h(b"other"), proof)
                bad = list(proof)
                bad[rng.randrange(len(bad))] = h(b"tampered")
                assert not verify_consistency(m, n, old_root, new_root, bad)


def test_history_rewritten_breaks_consistency() -> None:
    data = entries(50)
    old_root = mth(data[:20])
    rewritten = list(data)
    rewritten[7] = '{"事件":7,"患者":"李娜"}'.encode()
    tree = Tree([leaf_hash(e) for e in rewritten])
    proof = tree.consistency_proof(20, 50)
    assert not verify_consistency(20, 50, old_root, tree.root(), proof)


@pytest.mark.parametrize("bad", [(5, 5), (-1, 3), (0, 0)])
def test_out_of_range_inclusion_is_refused(bad: tuple[int, int]) -> None:
    assert not verify_inclusion(leaf_hash(b"a"), bad[0], bad[1], [], EMPTY_ROOT)
    with pytest.raises(ValueError):
        Tree([leaf_hash(b"a")] * 3).inclusion_proof(*bad)
