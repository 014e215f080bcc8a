"""Reading corpora in their real on-disk formats, keying documents and selecting token budgets."""

import json

import pytest

from litgpt_inheritune.errors import InherituneError
from litgpt_inheritune.data.subset import Candidate, document_key, iter_documents, select, select_per_domain

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
    with pytest.raises(InherituneError, match=r"x\.jsonl:2 \(not JSON.*--skip_unreadable true"):
        list(iter_documents(bad))
    (bad / "x.jsonl").write_text('{"content": "no text key"}\n')
    with pytest.raises(InherituneError, match="--text_key"):
        list(iter_documents(bad))


def files(directory):
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_subset_shards_are_deterministic_and_readable_by_litgpt(tmp_path, corpus, tiny_reference):
    from litgpt.data import LitData

    from litgpt_inheritune.data.sampler import build_subset

    root, _ = corpus
    a = build_subset(root, tiny_reference, tmp_path / "a", tokens=3000, val_tokens=500, seed=7,
                     domain_key="meta.redpajama_set_name")
    b = build_subset(root, tiny_reference, tmp_path / "b", tokens=3000, val_tokens=500, seed=7,
                     domain_key="meta.redpajama_set_name")
    assert files(tmp_path / "a" / "train") == files(tmp_path / "b" / "train")
    assert files(tmp_path / "a" / "val") == files(tmp_path / "b" / "val")
    c = build_subset(root, tiny_reference, tmp_path / "c", tokens=3000, val_tokens=500, seed=8)
    assert files(tmp_path / "a" / "train") != files(tmp_path / "c" / "train")

    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["train"]["tokens"] >= 3000 and summary["val"]["tokens"] >= 500
    assert sum(summary["train"]["tokens_per_domain"].values()) == summary["train"]["tokens"]
    assert a["train"] == b["train"] and c["train"]["tokens"] >= 3000

    data = LitData(data_path=tmp_path / "a", split_names=("train", "val"), num_workers=0)
    data.connect(batch_size=1, max_seq_length=63)
    batch = next(iter(data.train_dataloader()))
    assert batch.shape == (1, 64) and int(batch.max()) < 49152

    with pytest.raises(InherituneError, match="not empty"):
        build_subset(root, tiny_reference, tmp_path / "a", tokens=3000)
    with pytest.raises(InherituneError, match="fewer than the budget"):
        build_subset(root, tiny_reference, tmp_path / "d", tokens=10**9)
    assert not (tmp_path / "d").exists()


def test_cli_subset_then_inheritune_trains_on_it_for_whole_epochs(tmp_path, corpus, tiny_reference, litgpt_cli):
    from litgpt.args import EvalArgs, TrainArgs
    from litgpt.data import LitData

    from litgpt_inheritune.commands.inheritune import setup

    root, _ = corpus
    out = tmp_path / "subset"
    code, _, err = litgpt_cli("inheritune_data", str(root), str(tiny_reference), "--tokens", "2000",
                                     "--val_tokens", "300", "--out_dir", str(out))
    assert code == 0, err[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert 2000 <= summary["train"]["tokens"] and summary["corpus_documents"] == 30

    run = tmp_path / "run"
    setup(tiny_reference, n_layers=2, out_dir=run, precision="32-true", devices=1, logger_name="csv", compile=False,
          data=LitData(data_path=out, split_names=("train", "val"), num_workers=0),
          train=TrainArgs(epochs=2, max_tokens=None, micro_batch_size=2, global_batch_size=2, max_seq_length=64,
                          lr_warmup_steps=1, max_norm=1.0, save_interval=None, log_interval=1),
          eval=EvalArgs(interval=1000, max_iters=1, initial_validation=False, final_validation=False))
    blocks = summary["train"]["tokens"] // 65  # TokensLoader cuts blocks of max_seq_length + 1 tokens
    assert json.loads((run / "final" / "final.json").read_text())["iter"] == 2 * blocks // 2


def test_stratified_subset_follows_the_domain_weights(tmp_path, corpus, tiny_reference):
    from litgpt_inheritune.data.sampler import build_subset

    root, _ = corpus
    weights = {SETS[0]: 0.75, SETS[1]: 0.25}
    summary = build_subset(root, tiny_reference, tmp_path / "s", tokens=2000, val_tokens=0, seed=3,
                           domain_key="meta.redpajama_set_name", domain_weights=weights)
    per_domain = summary["train"]["tokens_per_domain"]
    assert set(per_domain) == {SETS[0], SETS[1]}
    assert per_domain[SETS[0]] >= 1500 and per_domain[SETS[1]] >= 500
    assert not (tmp_path / "s" / "val").exists()
    with pytest.raises(InherituneError, match="RedPajamaBook"):
        build_subset(root, tiny_reference, tmp_path / "t", tokens=500, val_tokens=0,
                     domain_key="meta.redpajama_set_name", domain_weights={"RedPajamaBook": 1.0})
    with pytest.raises(InherituneError, match="--domain_key"):
        build_subset(root, tiny_reference, tmp_path / "u", tokens=500, domain_weights={SETS[0]: 1.0})
    assert not (tmp_path / "t").exists() and not (tmp_path / "u").exists()
