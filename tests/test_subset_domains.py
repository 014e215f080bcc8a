"""Budgets by domain: the corpus's own proportions (--stratify) and one litdata dir per domain (--split_by_domain)."""

import json

import pytest

from litgpt_inheritune.errors import InherituneError

SIZES = {"RedPajamaArXiv": 6, "RedPajamaC4": 12, "CC-MAIN 2024/10": 24}  # documents per domain


def texts(n: int, start: int = 0) -> list[str]:
    """Real English text: Python's reference prose (pydoc_data/topics.py, PSF licence)."""
    from pydoc_data.topics import topics

    names = sorted(topics)
    return [topics[names[i % len(names)]] for i in range(start, start + n)]


@pytest.fixture
def corpus(tmp_path):
    root, start = tmp_path / "corpus", 0
    root.mkdir()
    for i, (domain, n) in enumerate(SIZES.items()):
        records = [{"text": t, "meta": {"redpajama_set_name": domain}} for t in texts(n, start)]
        (root / f"part-{i}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        start += n
    return root


def domain_tokens(corpus, reference) -> dict[str, list[int]]:
    from litgpt import Tokenizer

    from litgpt_inheritune.data.subset import iter_documents

    tokenizer, found = Tokenizer(reference), {}
    for doc in iter_documents(corpus, domain_key="meta.redpajama_set_name"):
        found.setdefault(doc.domain, []).append(len(tokenizer.encode(doc.text, bos=False, eos=True)))
    return found


def build(corpus, reference, out, **kwargs):
    from litgpt_inheritune.data.sampler import build_subset

    kwargs.setdefault("domain_key", "meta.redpajama_set_name")
    return build_subset(corpus, reference, out, progress=False, **kwargs)


def test_stratify_gives_each_domain_its_natural_share(tmp_path, corpus, tiny_reference):
    found = domain_tokens(corpus, tiny_reference)
    total = sum(map(sum, found.values()))
    summary = build(corpus, tiny_reference, tmp_path / "s", tokens=6000, val_tokens=400, seed=5, stratify=True)
    per_domain = summary["train"]["tokens_per_domain"]
    assert summary["stratify"] == "natural" and summary["corpus_tokens"] == total and set(per_domain) == set(SIZES)
    for domain, counts in found.items():
        share = round(6000 * sum(counts) / total)
        assert share <= per_domain[domain] < share + max(counts), domain
    # Without --stratify the same budget is a plain sample: the shares drift with the luck of the draw.
    plain = build(corpus, tiny_reference, tmp_path / "p", tokens=6000, val_tokens=400, seed=5)
    assert plain["stratify"] is None and plain["train"]["tokens"] >= 6000
    with pytest.raises(InherituneError, match="--stratify needs --domain_key"):
        build(corpus, tiny_reference, tmp_path / "x", tokens=100, stratify=True, domain_key=None)
    assert not (tmp_path / "x").exists()


def test_split_by_domain_writes_one_litdata_dir_per_domain(tmp_path, corpus, tiny_reference):
    from litdata import StreamingDataset
    from litdata.streaming import TokensLoader

    found = domain_tokens(corpus, tiny_reference)
    total = sum(map(sum, found.values()))
    out = tmp_path / "split"
    summary = build(corpus, tiny_reference, out, tokens=6000, val_tokens=300, seed=2, split_by_domain=True)
    dirs = {"RedPajamaArXiv": "RedPajamaArXiv", "RedPajamaC4": "RedPajamaC4", "CC-MAIN 2024/10": "CC-MAIN_2024_10"}
    assert {d: part["dir"] for d, part in summary["domains"].items()} == dirs
    written = json.loads((out / "summary.json").read_text())["domains"]
    assert written == summary["domains"]
    for domain, part in summary["domains"].items():
        share = round(6000 * sum(found[domain]) / total)  # natural proportions without weights
        assert share <= part["train_tokens"] < share + max(found[domain])
        assert 300 <= part["val_tokens"] < 300 + max(found[domain])  # --val_tokens is per domain
        for split, tokens in (("train", part["train_tokens"]), ("val", part["val_tokens"])):
            dataset = StreamingDataset(str(out / split / part["dir"]), item_loader=TokensLoader(block_size=32))
            assert len(dataset) == tokens // 32 and dataset[0].shape == (32,) and int(dataset[0].max()) < 49152
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted(dirs.values())
    assert summary["train"]["tokens"] == sum(p["train_tokens"] for p in summary["domains"].values())

    weighted = build(corpus, tiny_reference, tmp_path / "w", tokens=3000, val_tokens=0, split_by_domain=True,
                     domain_weights={"RedPajamaArXiv": 1, "RedPajamaC4": 3})
    assert set(weighted["domains"]) == {"RedPajamaArXiv", "RedPajamaC4"} and not (tmp_path / "w" / "val").exists()
    assert weighted["domains"]["RedPajamaC4"]["train_tokens"] >= 2250
    assert weighted["domains"]["RedPajamaArXiv"]["train_tokens"] >= 750


def test_split_by_domain_refuses_colliding_dir_names(tmp_path, tiny_reference):
    root = tmp_path / "c"
    root.mkdir()
    records = [{"text": t, "meta": {"redpajama_set_name": "web/en" if i % 2 else "web_en"}}
               for i, t in enumerate(texts(8))]
    (root / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(InherituneError, match=r"'web/en' and 'web_en' both become the dir name 'web_en'"):
        build(root, tiny_reference, tmp_path / "o", tokens=200, val_tokens=0, split_by_domain=True)
    assert not (tmp_path / "o").exists()
    with pytest.raises(InherituneError, match="--split_by_domain needs --domain_key"):
        build(root, tiny_reference, tmp_path / "o", tokens=200, split_by_domain=True, domain_key=None)
