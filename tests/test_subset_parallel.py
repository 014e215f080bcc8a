"""The same shards whatever the work split: any number of workers, and tokenizing only the candidates."""

import json

import pytest

DOMAINS = ["RedPajamaArXiv", "RedPajamaC4", "RedPajamaGithub"]


def texts(n: int, start: int = 0) -> list[str]:
    """Real English text: Python's reference prose (pydoc_data/topics.py, PSF licence)."""
    from pydoc_data.topics import topics

    names = sorted(topics)
    return [topics[names[i % len(names)]] for i in range(start, start + n)]


def files(directory):
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("parallel") / "corpus"
    root.mkdir()
    for i in range(4):
        records = [{"text": t, "meta": {"redpajama_set_name": DOMAINS[(i + j) % 3]}}
                   for j, t in enumerate(texts(40, 40 * i))]
        if i == 3:
            pq.write_table(pa.Table.from_pylist(records), root / "part-3.parquet")
        else:
            (root / f"part-{i}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def build(corpus, reference, out, **kwargs):
    from litgpt_inheritune.data.sampler import build_subset

    kwargs = {"tokens": 8000, "val_tokens": 1000, "seed": 11, "domain_key": "meta.redpajama_set_name", **kwargs}
    return build_subset(corpus, reference, out, progress=False, **kwargs)


@pytest.mark.parametrize("mode", [{}, {"domain_weights": {DOMAINS[0]: 1, DOMAINS[2]: 2}},
                                  {"domain_weights": {DOMAINS[1]: 1, DOMAINS[2]: 1}, "split_by_domain": True}],
                         ids=["plain", "weights", "split_by_domain"])
def test_workers_and_candidate_pass_do_not_change_the_shards(tmp_path, corpus, tiny_reference, mode, monkeypatch):
    from litgpt_inheritune.data import sampler as data_subset

    everything = build(corpus, tiny_reference, tmp_path / "all", num_workers=1, candidate_pass=False, **mode)
    assert everything["passes"] == 1 and everything["tokenized_documents"] == everything["corpus_documents"] == 160
    expected = files(tmp_path / "all")
    runs = {"n2": dict(num_workers=2), "n2-all": dict(num_workers=2, candidate_pass=False),
            "n1": dict(num_workers=1)}
    for name, options in runs.items():
        summary = build(corpus, tiny_reference, tmp_path / name, **options, **mode)
        assert files(tmp_path / name) .keys() == expected.keys()
        for path, data in files(tmp_path / name).items():
            if path.name != "summary.json":
                assert data == expected[path], (name, path)
        assert summary["train"] == everything["train"] and summary["val"] == everything["val"]
        if options.get("candidate_pass", True):  # a candidate pass tokenized a small part of the corpus, once
            assert summary["passes"] == 1 and summary["tokenized_documents"] < 80 and summary["corpus_tokens"] is None

    # A first threshold far too low (as for a corpus of very long tokens): more passes, the same shards.
    monkeypatch.setattr(data_subset, "CHARS_PER_TOKEN", 0.05)
    retried = build(corpus, tiny_reference, tmp_path / "retried", num_workers=2, **mode)
    assert retried["passes"] >= 2 and retried["train"] == everything["train"]
    assert {p: d for p, d in files(tmp_path / "retried").items() if p.name != "summary.json"} == {
        p: d for p, d in expected.items() if p.name != "summary.json"}
