"""`litgpt inheritune_arms`: Inheritune next to its baselines and ablations, on the same data and budget
(``litgpt_inheritune.experiments.arms``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from litgpt.args import EvalArgs, LogArgs, TrainArgs
from litgpt.data import DataModule

from litgpt_inheritune.rundir import is_rank_zero
from litgpt_inheritune.errors import InherituneError, one_line_errors
from litgpt_inheritune.experiments.arms import arms_table, run_arms


@one_line_errors
def setup(
    reference_dir: Path,
    n_layers: int | None = None,
    arms: list[str] = ["inherit", "random"],
    data: DataModule | None = None,
    out_dir: Path = Path("out/inheritune_arms"),
    analysis: Path | None = None,
    precision: Literal["bf16-true", "bf16-mixed", "32-true", None] = None,
    train: TrainArgs = TrainArgs(
        save_interval=None,
        log_interval=1,
        global_batch_size=8,
        micro_batch_size=1,
        lr_warmup_steps=100,
        epochs=None,
        max_seq_length=2048,
        max_norm=1.0,
        min_lr=3e-5,
    ),
    eval: EvalArgs = EvalArgs(interval=100, max_iters=100),
    log: LogArgs = LogArgs(),
    optimizer: str | dict = {"class_path": "torch.optim.AdamW", "init_args": {"lr": 3e-4, "weight_decay": 0.01}},
    kd_temperature: float = 2.0,
    kd_alpha: float = 0.5,
    kd_quantize: Literal["bnb.nf4", "bnb.int8", None] = None,
    devices: int | str = "auto",
    num_nodes: int = 1,
    seed: int = 42,
    seeds: list[int] | None = None,
    lrs: list[float] | None = None,
    test_data: Path | None = None,
    compile: bool = True,
    resume: bool | Literal["auto"] = "auto",
    overwrite: bool = False,
    strategy: Literal["auto", "ddp", "fsdp", "fsdp2"] = "auto",
) -> None:
    """Train Inheritune's child next to baselines and ablations of the same shape, data and budget; compare them.

    Arms: ``inherit`` (the method), ``random`` (random init), ``random_2x`` (random init trained on twice the
    tokens: the paper's equal-compute baseline), ``even`` / ``block_influence`` / ``angular_distance``
    (other block choices; the last two read ``analysis``), ``attention_norms`` / ``mlp_norms`` / ``no_norms`` (the
    paper's component ablations), ``kd`` / ``kd_random`` (logit distillation from the reference, with the inherited
    or a random start). Writes ``out_dir/arms.md`` (mean ± std over seeds of the best validation and the test loss,
    each arm against ``inherit`` marked "within noise" under two standard errors of the difference; the chosen lr
    and its rule), ``arms.json`` and ``curves.png`` (validation loss against tokens seen, a band per arm). Each run
    is in ``out_dir/<arm>`` (``out_dir/<arm>/seed<k>`` with ``seeds``, ``out_dir/<arm>/lr<lr>/seed<k>`` with
    ``lrs``). Rerunning skips finished runs and resumes unfinished ones.

    Arguments:
        reference_dir: LitGPT checkpoint dir of the reference model.
        n_layers: Blocks of every child.
        arms: The arms to run, in order.
        data: A LitGPT data module with a validation set (the same for every arm).
        out_dir: Directory for the arms' runs and the comparison.
        analysis: ``analysis.json`` from `litgpt inheritune_analyze` (for block_influence / angular_distance).
        precision: The precision to train in.
        train: Training arguments as for `litgpt inheritune`: ``--train.epochs E`` or ``--train.max_tokens T`` sets
            the budget every arm shares (give one of them; ``random_2x`` gets twice it).
        eval: Evaluation arguments; evaluations every ``eval.interval`` steps draw the curves.
        log: Logging arguments, as for `litgpt pretrain`.
        optimizer: An optimizer name or config.
        kd_temperature: Softmax temperature of the distillation loss.
        kd_alpha: Weight of the cross-entropy on the data; 1 - alpha weighs the KL to the teacher.
        kd_quantize: Load the teacher in 4-bit (``bnb.nf4``) or 8-bit (``bnb.int8``) with bitsandbytes (CUDA or CPU).
        devices: How many devices/GPUs to use.
        num_nodes: How many nodes the code is being run on.
        seed: The random seed of every arm when ``seeds`` is not given.
        seeds: Run every arm once per seed, e.g. ``'[0, 1, 2]'``; the table reports mean ± std over them.
        lrs: Learning rates to choose from per arm, e.g. ``'[3e-4, 1e-3]'``: each is trained on the first seed only
            and the one with the lowest best validation loss (never the test loss) runs the other seeds. Default:
            the optimizer's lr for every arm.
        test_data: The held-out test split, a directory of .txt files (e.g. the demo text's ``test/``) or a litdata
            token dir (``test/`` of `litgpt inheritune_data --test_tokens`): each run's best checkpoint (``best/``,
            else ``final/``) is evaluated there. Without it the table's test column says "no test split".
        compile: Compile the model with ``torch.compile`` as `litgpt pretrain` does.
        resume: ``auto`` (default) keeps the arms already in ``out_dir``, skips finished ones and resumes unfinished
            ones; ``true`` requires an earlier comparison there; ``false`` refuses one.
        overwrite: Delete an earlier comparison in ``out_dir`` and start again.
        strategy: For several devices: ``fsdp2``, ``fsdp``, ``ddp`` or ``auto`` (fsdp2 on GPUs, ddp on CPUs), as for
            `litgpt inheritune`. Only global rank 0 evaluates the arms and writes the comparison.
    """
    arguments = dict(locals())
    if arguments["n_layers"] is None:
        raise InherituneError("--n_layers is required: the depth of every arm's child")
    rows = run_arms(**arguments)
    if is_rank_zero():  # printed once
        print(arms_table(rows))
