"""Corrupt or unreadable corpus files: a one-line error that names the place, or, asked to, the file left out whole."""

import json

import pytest

from litgpt_inheritune.errors import InherituneError
from litgpt_inheritune.data.subset import UnreadableError, iter_documents


def texts(n: int, start: int = 0) -> list[str]:
    """Real English text: Python's reference prose (pydoc_data/topics.py, PSF licence)."""
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)[start:start + n]]


def jsonl(records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def files(directory):
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def bad_files(tmp_path):
    """Each kind of damage, one file each: {name: (bytes, expected message)}."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    good = jsonl({"text": t} for t in texts(6))
    parquet = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist([{"text": t} for t in texts(4)]), parquet)
    whole = zstandard.ZstdCompressor().compress(good.encode())
    return {
        "bad-json.jsonl": (good.encode() + b'{"text": "cut off\n', r"bad-json\.jsonl:7 \(not JSON"),
        "latin1.jsonl": (good.encode() + json.dumps({"text": "caf\u00e9"}).encode().replace(b"\\u00e9", b"\xe9")
                         + b"\n", r"latin1\.jsonl:7 \(not UTF-8"),
        "truncated.jsonl.zst": (whole[: len(whole) // 2], r"truncated\.jsonl\.zst \(truncated zstd"),
        "broken.parquet": (parquet.read_bytes()[:-40], r"broken\.parquet \("),
        "latin1.txt": ("line one\nline two caf\u00e9\n".encode("latin-1"), r"latin1\.txt:2 \(not UTF-8"),
        "notjson.jsonl": (b'["a list"]\n', r"notjson\.jsonl:1 \(a JSON line that is not an object"),
    }


def test_each_kind_of_damage_is_one_line_naming_the_place(tmp_path, bad_files):
    for name, (data, message) in bad_files.items():
        corpus = tmp_path / name.replace(".", "_")
        corpus.mkdir()
        (corpus / name).write_bytes(data)
        with pytest.raises(UnreadableError, match=message) as caught:
            list(iter_documents(corpus))
        assert "--skip_unreadable true" in str(caught.value) and "\n" not in str(caught.value)


@pytest.fixture
def corpora(tmp_path, bad_files):
    """The same good files with and without two damaged ones in the middle."""
    clean, damaged = tmp_path / "clean", tmp_path / "damaged"
    for root in (clean, damaged):
        for i in range(4):
            (root / f"part-{i}").mkdir(parents=True)
            (root / f"part-{i}" / "docs.jsonl").write_text(jsonl({"text": t} for t in texts(12, 12 * i)))
    (damaged / "part-1" / "bad-json.jsonl").write_bytes(bad_files["bad-json.jsonl"][0])  # 6 good lines first
    (damaged / "part-2" / "truncated.jsonl.zst").write_bytes(bad_files["truncated.jsonl.zst"][0])
    return clean, damaged


# The counting pass meets the damage first (default); without it, tokenizing does, after six documents of the file.
@pytest.mark.parametrize("num_workers, candidate_pass", [(1, False), (2, False), (2, True)])
def test_skip_unreadable_leaves_the_files_out_whole(tmp_path, corpora, tiny_reference, capfd, num_workers,
                                                    candidate_pass):
    from litgpt_inheritune.data.sampler import build_subset

    clean, damaged = corpora
    out = tmp_path / f"out{num_workers}"
    with pytest.raises(UnreadableError, match=r"bad-json\.jsonl:7 .*--skip_unreadable true"):
        build_subset(damaged, tiny_reference, out, tokens=4000, val_tokens=500, num_workers=num_workers,
                     candidate_pass=candidate_pass, progress=False)
    assert not out.exists()

    skipped = build_subset(damaged, tiny_reference, out, tokens=4000, val_tokens=500, skip_unreadable=True,
                           num_workers=num_workers, candidate_pass=candidate_pass, progress=False)
    assert "skipped 2 unreadable files" in capfd.readouterr().err
    assert len(skipped["skipped_files"]) == 2 and "bad-json.jsonl:7" in skipped["skipped_files"][0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_files"] == skipped["skipped_files"] and summary["corpus_documents"] == 48
    assert skipped["tokenized_documents"] == (48 if not candidate_pass else skipped["tokenized_documents"])

    # The six good documents read before the bad line are not used: the subset is the clean corpus's.
    reference = build_subset(clean, tiny_reference, tmp_path / f"clean{num_workers}", tokens=4000, val_tokens=500,
                             num_workers=num_workers, progress=False)
    assert reference["skipped_files"] == []
    assert files(out / "train") == files(tmp_path / f"clean{num_workers}" / "train")
    assert files(out / "val") == files(tmp_path / f"clean{num_workers}" / "val")


def test_cli_error_is_one_line(tmp_path, corpora, tiny_reference, litgpt_cli):
    _, damaged = corpora
    code, _, err = litgpt_cli("inheritune_data", str(damaged), str(tiny_reference), "--tokens", "4000",
                                     "--out_dir", str(tmp_path / "cli"))
    assert code != 0 and not (tmp_path / "cli").exists()
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: cannot read ") and "bad-json.jsonl:7" in last and "--skip_unreadable true" in last


def test_a_record_without_text_is_not_skipped(tmp_path, tiny_reference):
    from litgpt_inheritune.data.sampler import build_subset

    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.jsonl").write_text(jsonl({"content": t} for t in texts(5)))
    with pytest.raises(InherituneError, match="--text_key"):
        build_subset(tmp_path / "c", tiny_reference, tmp_path / "o", tokens=100, val_tokens=0,
                     skip_unreadable=True, progress=False)
    assert not (tmp_path / "o").exists()
