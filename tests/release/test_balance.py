"""Answer position in the release: per pair, seeded and recorded, the first image's answer is (a) in half of the pairs."""

from __future__ import annotations

import csv
import hashlib
import random

import pyarrow as pa
import pytest

from pipeline.core import patterns, schemas
from pipeline.release import folder as release
from pipeline.release import mmvp
from pipeline.release.items import PackageReject, answer_balance, build_items, option_order, released_first_answers
from tests.helpers.params import demo_params
from tests.helpers.release_world import build_release

WITHHELD = "LicenseRef-All-Rights-Reserved"  # not redistributable: items carry no image bytes, nothing is read
OTHER_LETTER = {"(a)": "(b)", "(b)": "(a)"}
WORDS = ("red blue green left right open closed two three small large wooden metal striped round square upper lower "
         "front back dog cat car door window sign arrow cup lamp chair").split()


def leaky_rows(n_pairs: int, seed: int = 7) -> tuple[list[dict], pa.Table]:
    """Accepted rows whose first image's answer is always (a) (a position leak), with random text, and their images."""
    rng = random.Random(seed)
    rows, images = [], []
    for n in range(n_pairs):
        a, b = sorted(hashlib.sha256(f"image {n} {side}".encode()).hexdigest() for side in "ab")
        words = rng.sample(WORDS, 5)
        rows.append({
            "pair_id": schemas.pair_id(a, b), "image_a": a, "image_b": b, "clip_sim": 0.97, "dino_sim": 0.4,
            "pattern": patterns.PATTERNS[n % len(patterns.PATTERNS)].key, "tags": [],
            "question": f"Is the {words[0]} {words[1]} {words[2]} or not?", "option_a": f"{words[3]} {n}",
            "option_b": f"{words[4]} {n}", "answer_a": "(a)", "answer_b": "(b)",
            "statement_a": f"The {words[1]} is {words[3]}.", "statement_b": f"The {words[1]} is {words[4]}.",
            "writer": "w1", "verification": "verified", "verifier_answers_a": ["(a)", "unanswerable"],
            "verifier_answers_b": ["(b)", "(a)"], "writer_answer_a": None, "writer_answer_b": None,
        })
        for image_id in (a, b):
            images.append({"image_id": image_id, "source": "generated", "source_path": f"{image_id}.png",
                           "locations": [f"{image_id}.png"], "source_license": WITHHELD, "format": "PNG", "width": 8,
                           "height": 8, "n_bytes": 100, "frame_count": 1})
    return rows, pa.Table.from_pylist(images, schema=schemas.IMAGES)


def items_of(rows: list[dict], images: pa.Table, seed: int = 0, released_order: dict[str, str] | None = None,
             ) -> tuple[list[dict], list]:
    """The real build_items over `rows` with `package.option_order_seed` = seed."""

    def no_read(path: str) -> bytes:
        raise AssertionError(f"withheld image {path} must not be read")

    params = demo_params("package", option_order_seed=seed)
    return build_items(pa.Table.from_pylist(rows, schema=schemas.ACCEPTED), images, no_read, lambda b: b, params,
                       released_order=released_order)


def first_answers(items: list[dict]) -> dict[str, str]:
    return {i["pair_id"]: i["answer"] for i in items if i["member"] == "a"}


def test_the_first_answer_is_a_in_exactly_half_of_the_released_pairs():
    rows, images = leaky_rows(41)
    rows[3]["answer_b"] = "(a)"  # rejected: the same answer twice
    rows[10]["question"] = " "  # rejected: empty question
    items, rejected = items_of(rows, images)
    assert sorted(r.reason for r in rejected) == [PackageReject.BAD_ANSWERS, PackageReject.EMPTY_TEXT]
    firsts = first_answers(items)
    assert len(firsts) == 39
    # odd count: one more (a); counted among the released pairs only
    assert sorted(firsts.values()).count("(a)") == 20 and sorted(firsts.values()).count("(b)") == 19
    assert firsts == option_order(list(firsts), 0, {})
    # every written first answer was (a): exactly the pairs now answered (b) first had their options reversed
    assert {i["pair_id"] for i in items if i["options_swapped"]} == {p for p, a in firsts.items() if a == "(b)"}
    assert answer_balance(items, 0) == {"pairs": 39, "first_answer_a": 20, "first_answer_b": 19, "swapped_pairs": 19,
                                        "seed": 0}


def test_the_order_is_ranked_by_the_seeded_hash_of_the_pair_id():
    rows, images = leaky_rows(30)
    ids = [r["pair_id"] for r in rows]
    ranked = sorted(ids, key=lambda p: hashlib.sha256(f"5:{p}".encode()).hexdigest())
    assert option_order(ids, 5, {}) == {p: ("(a)", "(b)")[k % 2] for k, p in enumerate(ranked)}
    # same seed, same order (whatever the row order); another seed, another order, the same balance
    same = items_of(list(reversed(rows)), images, seed=5)[0]
    again = items_of(rows, images, seed=5)[0]
    other = items_of(rows, images, seed=6)[0]
    assert first_answers(same) == first_answers(again) == option_order(ids, 5, {})
    assert same == again
    assert first_answers(other) != first_answers(again)
    assert sorted(first_answers(other).values()) == sorted(first_answers(again).values()) == ["(a)"] * 15 + ["(b)"] * 15


def test_each_item_records_how_its_written_options_and_answers_map_to_the_released_ones():
    rows, images = leaky_rows(24)
    rows[5].update(answer_a="(b)", answer_b="(a)")  # written the other way round
    items, _ = items_of(rows, images)
    written = {r["pair_id"]: r for r in rows}
    by_pair: dict[str, list[dict]] = {}
    for item in items:
        by_pair.setdefault(item["pair_id"], []).append(item)
    assert {i["options_swapped"] for i in items} == {True, False}
    for pair_id, (a, b) in by_pair.items():
        row = written[pair_id]
        # both members keep the same options and the same record of the order
        assert a["options"] == b["options"] and a["options_swapped"] == b["options_swapped"]
        assert a["answer"] != b["answer"]
        swapped = a["options_swapped"]
        letter = OTHER_LETTER if swapped else {x: x for x in patterns.ANSWERS}
        options = [row["option_a"], row["option_b"]]
        assert a["options"] == (options[::-1] if swapped else options)
        for item in (a, b):
            member = item["member"]
            assert item["answer"] == letter[row[f"answer_{member}"]]
            # the right option's text never changes: only its letter
            assert item["options"][patterns.ANSWERS.index(item["answer"])] == options[patterns.ANSWERS.index(row[f"answer_{member}"])]
            assert item["verifier_answers"] == [letter.get(v, v) for v in row[f"verifier_answers_{member}"]]
            assert item["statement"] == row[f"statement_{member}"] and item["question"] == row["question"]


def test_a_new_version_keeps_the_released_pairs_letters_and_balances_with_the_new_ones():
    rows, images = leaky_rows(33)
    old = first_answers(items_of(rows[:30], images)[0])
    # three pairs added: by rank alone many released pairs would change letter; kept, none does
    assert sum(old[p] != a for p, a in option_order(list(old) + [r["pair_id"] for r in rows[30:]], 0, {}).items()
               if p in old) > 0
    items, _ = items_of(rows, images, released_order=old)
    new = first_answers(items)
    assert {p: new[p] for p in old} == old
    assert sorted(new.values()).count("(a)") == 17 and sorted(new.values()).count("(b)") == 16
    # pairs removed: the fewest released pairs change letter to restore the balance, the last ranked of the surplus
    gone = [p for p, a in old.items() if a == "(a)"][:6]
    kept_rows = [r for r in rows[:30] if r["pair_id"] not in gone]
    after = first_answers(items_of(kept_rows, images, released_order=old)[0])
    changed = sorted(p for p in after if after[p] != old[p])
    assert len(changed) == 3 and {old[p] for p in changed} == {"(b)"}
    assert sorted(after.values()).count("(a)") == sorted(after.values()).count("(b)") == 12
    ranked_b = [p for p in option_order(list(after), 0, {}) if old[p] == "(b)"]
    assert sorted(ranked_b[-3:]) == changed


@pytest.fixture(scope="module")
def balanced_release(sample_corpus, tmp_path_factory):
    return build_release(sample_corpus, tmp_path_factory.mktemp("balance"))


def test_the_mmvp_layout_and_the_parquet_carry_the_released_order(balanced_release):
    items = {i["mmvp_index"]: i for i in release.read_items(balanced_release)}
    with open(balanced_release / mmvp.MMVP_DIR / mmvp.QUESTIONS, newline="") as handle:
        body = list(csv.reader(handle))[1:]
    assert len(body) == len(items) == 8
    for position, (_index, _question, options, answer) in enumerate(body):
        item = items[position + 1]
        assert answer == item["answer"] and list(mmvp.parse_options(options)) == item["options"]
    # pairs are consecutive rows, both with the same options: the first image's answer is (a) in half of them
    assert sorted(row[3] for row in body[0::2]) == ["(a)", "(a)", "(b)", "(b)"]
    for first, second in zip(body[0::2], body[1::2]):
        assert first[2] == second[2] and first[3] != second[3]
        assert items[int(first[0])]["options_swapped"] == items[int(second[0])]["options_swapped"]


def test_the_released_letters_are_read_back_from_the_release_record(balanced_release, tmp_path):
    record = tmp_path / "RELEASED.json"
    assert release.record_release(record, balanced_release)
    last = release.last_released(release.read_released(record), release.read_manifest(balanced_release)["name"])
    assert released_first_answers(last) == first_answers(release.read_items(balanced_release))
    assert released_first_answers(None) == {}
