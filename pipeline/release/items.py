"""Release items from accepted annotations: two per pair, each checked; a pair that cannot be released is named with its reason.

`build_items` is the one place that turns an accepted row into the items a release holds (text,
answers, images encoded as the annotators saw them, licence, verification, gate flags, option
order); the package stage writes them and the diagnose stage asks models about exactly these items.

Answer position is balanced per pair (`option_order`): among the released pairs, the first image's
answer is (a) in half of them (one more when the count is odd), so neither a model that always
answers one letter nor a text-only model that reads the position learns anything from it.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from pipeline.core import patterns
from pipeline.core.report import progress
from pipeline.diagnostics import records
from pipeline.images.decode import DecodeError
from pipeline.params import PackageParams
from pipeline.release import folder as release

if TYPE_CHECKING:  # a type only: `remove` imports this module with the base install, which has no VLM backends
    from pipeline.vlm.gate_rules import GateDecision


class PackageReject(str, enum.Enum):
    """Why an accepted pair was not packaged. Closed set."""

    UNKNOWN_PATTERN = "unknown_pattern"
    BAD_ANSWERS = "bad_answers"  # not "(a)"/"(b)", or the same for both images
    EMPTY_TEXT = "empty_text"  # question or an option is blank
    DUPLICATE_PAIR = "duplicate_pair"
    MISSING_IMAGE = "missing_image"  # image id not in the images table
    UNREADABLE_IMAGE = "unreadable_image"  # corpus bytes could not be read or decoded
    EXCLUDED = "excluded"  # taken down (params package.exclude)
    GATE_DROPPED = "gate_dropped"  # flagged by the blind gate and the gate drops flagged items


@dataclass(frozen=True)
class Rejected:
    """An accepted pair left out of the release, with the reason and what to fix."""

    pair_id: str
    reason: PackageReject
    detail: str


def build_items(
    accepted: pa.Table,
    images: pa.Table,
    read_bytes: Callable[[str], bytes],
    encode: Callable[[bytes], bytes],
    params: PackageParams,
    gate: GateDecision | None = None,
    released_order: Mapping[str, str] | None = None,
) -> tuple[list[dict[str, Any]], list[Rejected]]:
    """Release items (two per accepted pair) and the pairs left out, each with its reason.

    `released_order` (`released_first_answers` of the last released version) keeps the answer letters of
    pairs already released, so a new version does not reshuffle them (see `option_order`).
    """
    image_rows = {r["image_id"]: r for r in images.to_pylist()}
    excluded = set(params.exclude)
    allowed = {lic.lower() for lic in params.redistributable_licenses}
    items: list[dict[str, Any]] = []
    rejected: list[Rejected] = []
    seen: set[str] = set()
    rows = sorted(accepted.to_pylist(), key=lambda r: r["pair_id"])
    for row in progress(rows, desc="package", unit="pair"):
        pair_id = row["pair_id"]
        problem = _check_row(row, seen, excluded, image_rows, gate)
        seen.add(pair_id)
        if problem is not None:
            rejected.append(Rejected(pair_id, *problem))
            continue
        pattern = patterns.lookup(row["pattern"])
        has_statements = bool((row["statement_a"] or "").strip() and (row["statement_b"] or "").strip())
        pair_items = []
        try:
            for member in release.MEMBERS:
                image_id = row[f"image_{member}"]
                meta = image_rows[image_id]
                redistributed = (meta["source_license"] or "").lower() in allowed
                image = encode(read_bytes(meta["source_path"])) if redistributed else None
                item_id = records.item_id(pair_id, member)
                pair_items.append(
                    {
                        "item_id": item_id,
                        "pair_id": pair_id,
                        "member": member,
                        "image": image,
                        "image_sha256": release.sha256_hex(image) if image is not None else None,
                        "source_sha256": image_id,
                        "question": row["question"].strip(),
                        "options": [row["option_a"].strip(), row["option_b"].strip()],
                        "answer": row[f"answer_{member}"],
                        "pattern": pattern.paper,
                        "pattern_key": pattern.key,
                        "tags": _tag_names(row["tags"], pattern),
                        "statement": row[f"statement_{member}"].strip() if has_statements else None,
                        "source": meta["source"],
                        "source_path": meta["source_path"],
                        "source_license": meta["source_license"],
                        "redistributed": redistributed,
                        "clip_sim": float(row["clip_sim"]),
                        "dino_sim": float(row["dino_sim"]),
                        "verification": row["verification"],
                        "verifier_answers": list(row[f"verifier_answers_{member}"]),
                        "gate_flags": sorted(gate.flags.get(item_id, ())) if gate else [],
                        "options_swapped": False,
                    }
                )
        except (DecodeError, OSError) as err:
            rejected.append(Rejected(pair_id, PackageReject.UNREADABLE_IMAGE, f"{err}; check the corpus and rerun ingest"))
            continue
        except patterns.PatternError as err:
            rejected.append(Rejected(pair_id, PackageReject.UNKNOWN_PATTERN, f"tags: {err}"))
            continue
        items.extend(pair_items)
    return balance_options(items, params.option_order_seed, released_order or {}), rejected


def option_order(pair_ids: Sequence[str], seed: int, released_order: Mapping[str, str]) -> dict[str, str]:
    """pair_id → the answer its first image gets in the release; (a) for half of the pairs (one more when odd).

    Pairs are ranked by sha256(f"{seed}:{pair_id}") and, in that order, get (a), (b), (a), ... .
    A pair of the last released version keeps the letter it had there (`released_order`), so adding
    pairs does not move the others (by rank alone, one pair added to 300 would reverse the options of
    about half of them, each a changed item for the changelog); new pairs take the letters that
    restore the balance, in rank order. Where the kept letters cannot be balanced by the new pairs
    (pairs removed), the fewest kept pairs change letter: the last ranked of the surplus letter.
    """
    ranked = sorted(set(pair_ids), key=lambda p: (hashlib.sha256(f"{seed}:{p}".encode()).hexdigest(), p))
    first, second = patterns.ANSWERS
    order = {p: released_order[p] for p in ranked if released_order.get(p) in patterns.ANSWERS}
    wanted = {first: (len(ranked) + 1) // 2, second: len(ranked) // 2}
    for letter, other in ((first, second), (second, first)):
        holders = [p for p in ranked if order.get(p) == letter]
        for pair_id in holders[wanted[letter]:]:
            order[pair_id] = other
    left = {letter: wanted[letter] - sum(v == letter for v in order.values()) for letter in patterns.ANSWERS}
    turn = first
    for pair_id in (p for p in ranked if p not in order):
        if not left[turn]:
            turn = second if turn == first else first
        order[pair_id] = turn
        left[turn] -= 1
        turn = second if turn == first else first
    return {p: order[p] for p in ranked}


def released_first_answers(last: Mapping[str, Any] | None) -> dict[str, str]:
    """pair_id → its first image's answer in the last released version (`release.last_released`), from its record.

    The record keeps a fingerprint of each item's answer (`release.item_fingerprints`); a letter is
    recognised by fingerprinting both letters the same way. None (no release yet): {}.
    """
    if last is None:
        return {}
    letter_of = {release.item_fingerprints([{"item_id": letter, "answer": letter}])[letter]["answer"]: letter
                 for letter in patterns.ANSWERS}
    out = {}
    for item_id, prints in last.get("items", {}).items():
        pair_id, member = item_id.rsplit("-", 1)
        if member == release.MEMBERS[0] and prints.get("answer") in letter_of:
            out[pair_id] = letter_of[prints["answer"]]
    return out


def balance_options(items: Sequence[Mapping[str, Any]], seed: int, released_order: Mapping[str, str]) -> list[dict[str, Any]]:
    """The items with each pair's written options reversed where its first image's answer differs from `option_order`'s.

    Both images of a pair keep the same options; both answers (and the verifiers' letters) flip with
    them; statements are about images, not letters, and stay. `options_swapped` records it per item.
    """
    first = {i["pair_id"]: i["answer"] for i in items if i["member"] == release.MEMBERS[0]}
    target = option_order(list(first), seed, released_order)
    return [_swapped(i) if first[i["pair_id"]] != target[i["pair_id"]] else dict(i) for i in items]


_OTHER_LETTER = dict(zip(patterns.ANSWERS, reversed(patterns.ANSWERS)))


def _other(answer: str) -> str:
    """The other letter of (a)/(b); any other answer (a verifier's "unanswerable") as it is."""
    return _OTHER_LETTER.get(answer, answer)


def _swapped(item: Mapping[str, Any]) -> dict[str, Any]:
    return {
        **item,
        "options": list(reversed(item["options"])),
        "answer": _other(item["answer"]),
        "verifier_answers": [_other(a) for a in item["verifier_answers"]],
        "options_swapped": not item["options_swapped"],
    }


def answer_balance(items: Sequence[Mapping[str, Any]], seed: int) -> dict[str, int]:
    """How the release placed answers: pairs, first images answered (a) and (b), pairs whose options were reversed, the seed."""
    firsts = [i for i in items if i["member"] == release.MEMBERS[0]]
    return {
        "pairs": len(firsts),
        "first_answer_a": sum(i["answer"] == patterns.ANSWERS[0] for i in firsts),
        "first_answer_b": sum(i["answer"] == patterns.ANSWERS[1] for i in firsts),
        "swapped_pairs": sum(bool(i["options_swapped"]) for i in firsts),
        "seed": seed,
    }


def _tag_names(tags: Sequence[str], primary: patterns.Pattern) -> list[str]:
    """Secondary patterns (any spelling) by their paper names, in MMVP's order, without the primary one."""
    found = {patterns.lookup(t) for t in tags if t.strip()} - {primary}
    return [p.paper for p in patterns.PATTERNS if p in found]


def _check_row(
    row: Mapping[str, Any], seen: set[str], excluded: set[str], image_rows: Mapping[str, Any], gate: GateDecision | None
) -> tuple[PackageReject, str] | None:
    pair_id = row["pair_id"]
    if pair_id in seen:
        return PackageReject.DUPLICATE_PAIR, "the accepted table holds this pair twice; keep one row"
    if pair_id in excluded or row["image_a"] in excluded or row["image_b"] in excluded:
        return PackageReject.EXCLUDED, "listed in package.exclude"
    if gate is not None and pair_id in gate.drop_pairs:
        return PackageReject.GATE_DROPPED, "flagged by the blind gate (gate.flagged: drop)"
    try:
        patterns.lookup(row["pattern"])
    except patterns.PatternError as err:
        return PackageReject.UNKNOWN_PATTERN, str(err)
    answers = (row["answer_a"], row["answer_b"])
    if not all(a in patterns.ANSWERS for a in answers) or answers[0] == answers[1]:
        return PackageReject.BAD_ANSWERS, f"answers {answers}: each must be one of {list(patterns.ANSWERS)} and they must differ"
    if not all((row[k] or "").strip() for k in ("question", "option_a", "option_b")):
        return PackageReject.EMPTY_TEXT, "question and both options must be non-empty"
    for member in release.MEMBERS:
        if row[f"image_{member}"] not in image_rows:
            return PackageReject.MISSING_IMAGE, f"image_{member} {row[f'image_{member}']} is not in the images table"
    return None
