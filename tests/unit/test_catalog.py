"""The typed catalog: every bad-row kind becomes a reject with its line and reason."""

from __future__ import annotations

import json

import pytest

from contentembed.pipeline.catalog import (
    CatalogError,
    TooManyRejects,
    check_single_modality,
    read_catalog_rows,
    write_rejects,
)
from tests.support.images import encoded, photo_like


def write_catalog(tmp_path, lines: list[str]):
    path = tmp_path / "catalog.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def row(**fields) -> str:
    return json.dumps(fields)


def test_each_bad_row_kind_is_rejected_with_its_line_and_reason(tmp_path) -> None:
    (tmp_path / "ok.png").write_bytes(encoded(photo_like(1)))
    (tmp_path / "dir.png").mkdir()
    lines = [
        row(id="good-text", text="a red chair", metadata={"price": 3}),  # 1
        "{not json",  # 2
        "[1, 2]",  # 3
        row(text="no id"),  # 4
        row(id="", text="empty id"),  # 5
        row(id="x" * 257, text="long id"),  # 6
        row(id=7, text="numeric id"),  # 7
        row(id="nothing"),  # 8
        row(id="both", text="t", image="ok.png"),  # 9
        row(id="blank", text="   "),  # 10
        row(id="missing-image", image="nope.png"),  # 11
        row(id="unreadable-image", image="dir.png"),  # 12
        row(id="good-text", text="second occurrence"),  # 13
        row(id="meta-list", text="t", metadata=[1]),  # 14
        row(id="meta-big", text="t", metadata={"blob": "x" * 10_000}),  # 15
        row(id="good-image", image="ok.png"),  # 16
        "",  # blank lines are skipped, not rejected
    ]
    catalog = read_catalog_rows(write_catalog(tmp_path, lines))
    assert [r.id for r in catalog.rows] == ["good-text", "good-image"]
    assert catalog.rows[0].text == "a red chair" and catalog.rows[0].metadata == {"price": 3}
    assert catalog.rows[1].image == (tmp_path / "ok.png").resolve()
    assert catalog.rows_total == 16 and catalog.modalities == ["image", "text"]
    reasons = {r.line: (r.id, r.reason) for r in catalog.rejects}
    expected = {
        2: (None, "not JSON"),
        3: (None, "expected a JSON object"),
        4: (None, "missing 'id'"),
        5: (None, "'id' is empty"),
        6: ("x" * 257, "longer than 256 bytes"),
        7: (None, "'id' must be a string"),
        8: ("nothing", "neither 'text' nor 'image'"),
        9: ("both", "both 'text' and 'image'"),
        10: ("blank", "'text' is empty"),
        11: ("missing-image", "is missing"),
        12: ("unreadable-image", "is unreadable"),
        13: ("good-text", "duplicate id 'good-text' (first at line 1)"),
        14: ("meta-list", "'metadata' must be an object"),
        15: ("meta-big", "above the limit of 8192"),
    }
    assert set(reasons) == set(expected)
    for line, (item_id, reason) in expected.items():
        assert reasons[line][0] == item_id, line
        assert reason in reasons[line][1], (line, reasons[line][1])

    out = tmp_path / "rejects.jsonl"
    assert write_rejects(out, reversed(catalog.rejects)) == len(expected)
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [w["line"] for w in written] == sorted(expected)
    assert set(written[0]) == {"line", "id", "reason"}


def test_duplicate_id_keeps_the_first_and_digests_follow_content(tmp_path) -> None:
    lines = [row(id="a", text="first"), row(id="b", text="same"), row(id="a", text="second"),
             row(id="c", text="same"), row(id="d", text="same", metadata={"k": 1})]
    catalog = read_catalog_rows(write_catalog(tmp_path, lines))
    assert [(r.id, r.text) for r in catalog.rows] == [("a", "first"), ("b", "same"),
                                                     ("c", "same"), ("d", "same")]
    assert [r.line for r in catalog.rejects] == [3]
    digests = [r.digest for r in catalog.rows]
    assert digests[1] == digests[2] and digests[2] != digests[3] and digests[0] != digests[1]


def test_max_rejects_stops_the_read(tmp_path) -> None:
    lines = [row(id=f"r{i}", text="" if i % 2 else "fine") for i in range(20)]
    path = write_catalog(tmp_path, lines)
    assert len(read_catalog_rows(path, max_rejects=10).rejects) == 10
    with pytest.raises(TooManyRejects) as caught:
        read_catalog_rows(path, max_rejects=3)
    assert caught.value.count == 4 and [r.line for r in caught.value.rejects] == [2, 4, 6, 8]
    assert "more than --max-rejects 3" in str(caught.value)


def test_mixed_modalities_fail_naming_the_first_line_of_the_other(tmp_path) -> None:
    (tmp_path / "p.png").write_bytes(encoded(photo_like(2)))
    lines = [row(id="t1", text="one"), row(id="t2", text="two"), row(id="i1", image="p.png"),
             row(id="t3", text="three")]
    catalog = read_catalog_rows(write_catalog(tmp_path, lines))
    assert catalog.first_line == {"text": 1, "image": 3}
    with pytest.raises(CatalogError, match=r"catalog.jsonl:3: a image row .* starts with text"):
        check_single_modality(catalog)
    single = read_catalog_rows(write_catalog(tmp_path, lines[:2]))
    check_single_modality(single)  # one modality: fine


def test_rows_too_large_to_send_or_too_deep_to_read_are_rejected_with_reasons(tmp_path) -> None:
    from contentembed.pipeline.catalog import MAX_ROW_BYTES, read_catalog_rows

    (tmp_path / "big.png").write_bytes(b"\0" * (MAX_ROW_BYTES + 1))
    lines = [
        json.dumps({"id": "ok", "text": "fine"}),
        json.dumps({"id": "huge", "text": "x" * (MAX_ROW_BYTES + 1)}),
        json.dumps({"id": "big", "image": "big.png"}),
        '{"id": "deep", "text": "x", "metadata": ' + "[" * 5000 + "]" * 5000 + "}",
    ]
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(lines) + "\n")
    catalog = read_catalog_rows(path, max_rejects=None)
    assert [row.id for row in catalog.rows] == ["ok"]
    reasons = {reject.line: reject.reason for reject in catalog.rejects}
    assert "more than a request may carry" in reasons[2] and "more than a request" in reasons[3]
    assert "nested too deep" in reasons[4]


def test_batches_are_cut_by_bytes_as_well_as_by_count() -> None:
    from contentembed.pipeline.catalog import sized_batches

    sizes = [3, 3, 3, 9, 1, 1, 1, 1]
    batches = sized_batches(sizes, lambda size: size, max_count=3, max_bytes=7)
    assert batches == [[3, 3], [3], [9], [1, 1, 1], [1]]  # one over the limit goes alone


def test_only_size_refusals_split_a_batch_into_rejected_rows() -> None:
    """A batch refused for its size is bisected down to the rows; overload, a full disk
    or gRPC's own concurrency refusal end the run instead of rejecting good rows."""
    from contentembed.client.errors import ResourceExhaustedError
    from contentembed.pipeline.ingest import refused_for_the_rows

    def refusal(reason: str, message: str = "x") -> ResourceExhaustedError:
        return ResourceExhaustedError(message, reason)

    assert refused_for_the_rows(refusal("REQUEST_TOO_LARGE"))
    assert refused_for_the_rows(refusal("", "Received message larger than max (9 vs. 4)"))
    assert not refused_for_the_rows(refusal("DISK_FULL"))
    assert not refused_for_the_rows(refusal("", "Concurrent RPC limit exceeded!"))
