"""Reading corpora in their real on-disk formats, keying documents and selecting token budgets."""

import json

import pytest

from litgpt_inheritune.errors import InherituneError
from litgpt_inheritune.subset import Candidate, document_key, iter_documents, select, select_per_domain

# RedPajama-v1 records: {"text": ..., "meta": {"redpajama_set_name": ...}}; texts are Python's reference prose.
SETS = ["RedPajamaArXiv", "RedPajamaGithub", "RedPajamaWikipedia"]


def pydoc_texts(n: int) -> list[str]:
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)[:n]]


def redpajama_records(n: int) -> list[dict]:
    return [{"text": t, "meta": {"redpajama_set_name": SETS[i % 3]}} for i, t in enumerate(pydoc_texts(n))]


@pytest.fixture
def corpus(tmp_path):
    """The same 30 records spread over the four formats."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    records = redpajama_records(30)
    root = tmp_path / "corpus"
    (root / "a").mkdir(parents=True)
    (root / "a" / "part-0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:10]))
    lines = "".join(json.dumps(r) + "\n" for r in records[10:20]).encode()
    (root / "a" / "part-1.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    pq.write_table(pa.Table.from_pylist(records[20:28]), root / "part-2.parquet")
    (root / "txt").mkdir()
    for i, r in enumerate(records[28:]):
        (root / "txt" / f"doc{i}.txt").write_text(r["text"])
    (root / "README.md").write_text("not part of the corpus")
    return root, records


def test_reads_every_format_in_a_fixed_order(corpus):
    root, records = corpus
    docs = list(iter_documents(root, domain_key="meta.redpajama_set_name"))
    assert [d.text for d in docs] == [r["text"] for r in records]
    assert [d.source for d in docs][:1] == ["a/part-0.jsonl"]
    assert docs[0].domain == SETS[0] and docs[-1].domain == "all"  # .txt files carry no metadata
    assert [d.index for d in docs if d.source == "part-2.parquet"] == list(range(8))


def test_keys_depend_on_seed_and_place_only():
    assert document_key(1, "a.jsonl", 3) == document_key(1, "a.jsonl", 3)
    assert document_key(1, "a.jsonl", 3) != document_key(2, "a.jsonl", 3)
    keys = [document_key(0, "f", i) for i in range(2000)]
    assert all(0 <= k < 1 for k in keys)
    assert 0.45 < sum(keys) / len(keys) < 0.55  # roughly uniform


def candidates(n: int, seed: int = 0) -> list[Candidate]:
    return [Candidate(document_key(seed, "f", i), "f", i, 10 + i % 7, SETS[i % 3]) for i in range(n)]


def test_budget_is_met_within_one_document():
    pool = candidates(200)
    chosen = select(pool, 500)
    total = sum(c.n_tokens for c in chosen)
    assert 500 <= total < 500 + max(c.n_tokens for c in chosen)
    assert sum(c.n_tokens for c in chosen[:-1]) < 500
    # Smallest keys first, and the choice does not depend on the order candidates arrive in.
    assert [c.key for c in chosen] == sorted(c.key for c in chosen)
    assert select(list(reversed(pool)), 500) == chosen
    assert max(c.key for c in chosen) < min(c.key for c in pool if c not in chosen)


def test_stratified_budgets_per_domain():
    chosen = select_per_domain(candidates(300), {SETS[0]: 300, SETS[1]: 100})
    per_domain = {name: sum(c.n_tokens for c in chosen if c.domain == name) for name in SETS}
    assert 300 <= per_domain[SETS[0]] < 317 and 100 <= per_domain[SETS[1]] < 117 and per_domain[SETS[2]] == 0


def test_errors_are_one_line(tmp_path):
    with pytest.raises(InherituneError, match="fewer than the budget"):
        select(candidates(5), 10_000)
    with pytest.raises(InherituneError, match="RedPajamaBook"):
        select_per_domain(candidates(30), {"RedPajamaBook": 10})
    with pytest.raises(InherituneError, match="does not exist"):
        list(iter_documents(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InherituneError, match="holds no"):
        list(iter_documents(tmp_path / "empty"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jsonl").write_text('{"text": "fine"}\n{"text": broken\n')
    with pytest.raises(InherituneError, match=r"x\.jsonl:2 is not JSON"):
        list(iter_documents(bad))
    (bad / "x.jsonl").write_text('{"content": "no text key"}\n')
    with pytest.raises(InherituneError, match="--text_key"):
        list(iter_documents(bad))
