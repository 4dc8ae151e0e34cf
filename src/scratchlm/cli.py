"""`scratchlm …`: one subcommand per task. Bad input ends with one `error:` line and exit code 2."""

import argparse
import json
import os
import sys
from pathlib import Path

from . import __version__
from .config import read_yaml
from .errors import ScratchError
from .train.plan import GPUS, run_plan

POST_TRAINING = ("sft", "dpo")  # passed through to TRL's CLI: see posttrain.py


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not sys.stderr.isatty():  # a log file: the libraries' bars (loading weights, downloads) are one endless
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # line there; read when they are imported
    try:
        if argv and argv[0] in POST_TRAINING:
            from .posttrain import run_stage

            export = run_stage(argv[0], argv[1:])
            if export is not None:  # None: it printed --help
                print(f"done: {export}")
            return 0
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra and not getattr(args, "overrides_allowed", False):
            parser.parse_args(argv)  # argparse's own refusal of them (exit 2)
        args.overrides = extra
        return args.run(args) or 0
    except ScratchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="scratchlm", description=__doc__)
    parser.add_argument("--version", action="version", version=f"scratchlm {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    add_model_parsers(commands)
    add_data_parsers(commands)
    add_plan_parser(commands)
    add_run_parsers(commands)
    add_after_pretraining_parsers(commands)
    add_generation_parsers(commands)
    return parser


class HelpFormatter(argparse.HelpFormatter):
    """Every option's default in --help, unless its help says what the default is already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS  # not 0
        if action.option_strings and not unset and "default" not in text:
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """The parser of every command (subcommands inherit the class): defaults shown, the presets listed."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def format_help(self) -> str:
        text = super().format_help()
        if PRESETS in text:  # read only for --help: importing the model package takes seconds
            from .model.presets import PRESETS as names

            text = text.replace(PRESETS, ", ".join(names))
        return text


PRESETS = "<presets>"  # in help texts; Parser.format_help puts the names there


def add_model_parsers(commands) -> None:
    model = commands.add_parser("model", help="model presets: parameter counts, random init")
    model_commands = model.add_subparsers(required=True, metavar="ACTION")
    info = model_commands.add_parser("info", help="parameters and FLOPs per token of a model")
    _add_model_choice(info)
    info.add_argument("--seq-len", type=int, help="context for the attention FLOPs (default: the model's)")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(run=run_model_info)
    init = model_commands.add_parser("init", help="write a randomly initialised model directory")
    _add_model_choice(init)
    init.add_argument("--out", required=True, help="directory to write")
    init.add_argument(
        "--tokenizer",
        required=True,
        help="tokenizer directory saved with the model (every command reading it needs it)",
    )
    init.add_argument("--seed", type=int, default=0, help="initialisation seed")
    init.set_defaults(run=run_model_init)

    export = commands.add_parser("export", help="a model directory or training checkpoint as stock llama or scratch")
    export.add_argument("checkpoint", help="model directory or runs/<run>/checkpoints/step_XXXXXXXX")
    export.add_argument("--out", required=True, help="directory to write (with a model card, README.md)")
    export.add_argument(
        "--format",
        choices=["auto", "scratch", "llama", "bitnet-packed"],
        default="auto",
        help="llama: no code needed (models without custom options); scratch: our code saved beside it "
        "(trust_remote_code=True); auto: llama when the model can be one, else scratch; bitnet-packed: 2 bits per "
        "BitNet weight",
    )
    export.set_defaults(run=run_export)


def add_data_parsers(commands) -> None:
    tokenizer = commands.add_parser("tokenizer", help="train byte-level BPE tokenizers")
    tokenizer_commands = tokenizer.add_subparsers(required=True, metavar="ACTION")
    train = tokenizer_commands.add_parser("train", help="train a tokenizer on text")
    train.add_argument(
        "--input",
        nargs="+",
        required=True,
        help="files, directories, globs, save_to_disk dirs, or Hub ids owner/name[:config][@split]",
    )
    train.add_argument("--vocab-size", type=int, required=True, help="tokens, special tokens included")
    train.add_argument("--out", required=True, help="directory to write")
    train.add_argument("--text-column", default="text", help="column holding the text (jsonl/parquet)")
    train.add_argument("--max-chars", type=int, default=2_000_000_000, help="text to read, shared among inputs")
    train.set_defaults(run=run_tokenizer_train)

    data = commands.add_parser("data", help="the embedded default dataset; token shards")
    data_commands = data.add_subparsers(required=True, metavar="ACTION")
    default = data_commands.add_parser("default", help="write the embedded default dataset (offline, seeded)")
    default.add_argument("--out", required=True, help="directory to write")
    default.add_argument("--seed", type=int, default=0, help="seed of the synthetic world and its text")
    default.add_argument("--tokens", type=int, default=2_000_000, help="approximate size of the pretraining text")
    default.add_argument("--countries", type=int, default=16, help="size of the synthetic world (8 facts each)")
    default.set_defaults(run=run_data_default)
    prepare = data_commands.add_parser("prepare", help="tokenize sources into token shards")
    prepare.add_argument("--config", required=True, help="YAML: tokenizer, sources, val_fraction, num_proc")
    prepare.add_argument("--out", required=True, help="directory to write")
    prepare.set_defaults(run=run_data_prepare)


def add_plan_parser(commands) -> None:
    plan = commands.add_parser(
        "plan", help="steps, tokens, time, cost and memory per GPU of a run before paying for it"
    )
    choice = plan.add_mutually_exclusive_group(required=True)
    choice.add_argument(
        "--recipe", help="a pretraining YAML (recipes/<run>/pretrain.yaml): its model, exact batch and horizon"
    )
    choice.add_argument("--preset", help=f"a named preset: {PRESETS}")
    choice.add_argument("--config", help="YAML with ScratchConfig keys and an optional `preset:` (or a recipe)")
    plan.add_argument(
        "--gpu", metavar="GPU", help=f"{', '.join(GPUS)}; any case and spacing ('RTX 3090', 'H100 SXM', A100-40GB)"
    )
    plan.add_argument(
        "--gpu-memory", type=positive(float), metavar="GIB", help="another card's memory (or the named's)"
    )
    plan.add_argument("--gpu-tflops", type=positive(float), metavar="T", help="another card's dense bf16 TFLOPS")
    plan.add_argument(
        "--num-gpus",
        type=positive(int),
        default=1,
        help="processes; more than one: FSDP2-sharded; a recipe keeps its global batch",
    )
    horizon = plan.add_mutually_exclusive_group()
    horizon.add_argument("--steps", type=int, help="optimizer steps")
    horizon.add_argument("--tokens", type=float, help="e.g. 20e9")
    horizon.add_argument("--ratio", type=float, help="tokens per parameter (Chinchilla: 20)")
    horizon.add_argument("--flops", type=float, help="e.g. 1e20")
    plan.add_argument("--tokens-per-step", type=int, help="default 524,288 (a recipe: its own)")
    plan.add_argument("--micro-batch", type=int, help="per GPU; default: what makes tokens-per-step")
    plan.add_argument("--seq-len", type=int, help="default: the model's context")
    plan.add_argument("--tok-per-s", type=float, help="a measured throughput (default: peak x MFU)")
    plan.add_argument("--mfu", type=float, help="assumed MFU (default per GPU, from published runs)")
    plan.add_argument(
        "--usd-per-gpu-hour", type=float, help="default: the GPU's (its source is printed), else the recipe's"
    )
    plan.add_argument(
        "--write-config", metavar="FILE", help="--recipe: write the recipe with the fastest setting that fits"
    )
    plan.add_argument("--json", action="store_true", help="print JSON")
    plan.add_argument(
        "--rehearse",
        action="store_true",
        help="--recipe: run every phase of the run at full scale on fake tensors (on a GPU machine, real ones) "
        "and report each phase's peak per GPU",
    )
    plan.set_defaults(run=run_plan, overrides_allowed=True, rehearsal=run_rehearsal)
    plan.epilog = (
        "With --recipe, --key value pairs after the options override the recipe's keys (as recipes/pretrain.py "
        "takes them). Exit status 1: the recipe as given does not fit (unless --write-config wrote one that does)."
    )


def positive(kind):
    """An argparse type: a number of `kind` above 0 (argparse's one-line refusal, exit 2, otherwise)."""

    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in "invalid float value"
    return parse


def add_run_parsers(commands) -> None:
    status = commands.add_parser("status", help="progress, ETA, last metrics and samples of a run")
    status.add_argument("run_dir")
    status.add_argument("--watch", type=float, nargs="?", const=10.0, help="refresh every N seconds (default 10)")
    status.set_defaults(run=run_status)
    plot = commands.add_parser("plot", help="the loss curve of a run as RUN_DIR/plots/loss.png")
    plot.add_argument("run_dir")
    plot.set_defaults(run=run_plot)

    report = commands.add_parser("report", help="report.md, report.json and plots for one or more stage runs")
    report.add_argument("run_dirs", nargs="+", help="run directories, in pipeline order (pretrain midtrain sft dpo)")
    report.add_argument("--out", help="where to write (default: the first run's parent directory)")
    report.set_defaults(run=run_report)

    speedrun = commands.add_parser("speedrun", help="every stage of a recipe on the embedded default, resumable")
    speedrun.add_argument("--out", default=".", help="directory to run in (default: here, as the README's commands)")
    speedrun.add_argument("--recipe", default="recipes/tiny", help="a recipe folder")
    speedrun.set_defaults(run=run_speedrun)


def add_after_pretraining_parsers(commands) -> None:
    """The Hub, post-training (TRL's, see main) and evaluation."""
    push = commands.add_parser("push", help="upload a model directory or checkpoint to the Hugging Face Hub")
    push.add_argument("folder")
    push.add_argument("--repo-id", required=True, help="owner/name (created if absent)")
    push.add_argument("--revision", help="branch to commit to (created from main if absent; default main)")
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.set_defaults(run=run_push)
    pull = commands.add_parser("pull", help="download a Hub repository at a revision")
    pull.add_argument("spec", metavar="ID[@REVISION]")
    pull.add_argument("--out", required=True)
    pull.set_defaults(run=run_pull)

    for stage in POST_TRAINING:  # listed for --help; main() hands them to posttrain.run_stage
        commands.add_parser(stage, help=f"trl {stage} --config RECIPE: checked first, resumable, laid out like a run")

    evaluate = commands.add_parser("eval", help="evaluate a model directory")
    eval_commands = evaluate.add_subparsers(required=True, metavar="WHAT")
    chat = eval_commands.add_parser("chat", help="held-out chat QA accuracy and stop rate")
    chat.add_argument("--model", required=True, help="model directory or training checkpoint")
    chat.add_argument("--data", required=True, help="jsonl of {messages, answer} (the default's chat/test.jsonl)")
    chat.add_argument("--max-new-tokens", type=int, default=96, help="reply budget")
    chat.add_argument("--out", help="also write the result as JSON here")
    chat.set_defaults(run=run_eval_chat)
    preference = eval_commands.add_parser("preference", help="how often the chosen reply is the likelier one")
    preference.add_argument("--model", required=True, help="model directory or training checkpoint")
    preference.add_argument("--data", required=True, help="jsonl of {prompt, chosen, rejected}")
    preference.add_argument("--reference", help="reference model for the DPO reward margin (e.g. the SFT model)")
    preference.add_argument("--beta", type=float, default=0.1, help="DPO beta of the reward margin")
    preference.add_argument("--out", help="also write the result as JSON here")
    preference.set_defaults(run=run_eval_preference)

    bpb = eval_commands.add_parser("bpb", help="validation loss and bits per byte on prepared shards")
    bpb.add_argument("--model", required=True, help="model directory or training checkpoint")
    bpb.add_argument("--data", required=True, help="a shard directory from `scratchlm data prepare`")
    bpb.add_argument(
        "--seq-len", type=int, help="window length (default: the length it was trained with, else its context)"
    )
    bpb.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    bpb.add_argument("--max-windows", type=int, default=64, help="per source")
    bpb.add_argument("--out", help="also write the result as JSON here")
    bpb.set_defaults(run=run_eval_bpb)
    core = eval_commands.add_parser("core", help="the DCLM CORE metric, computed as nanochat does")
    core.add_argument("--model", required=True, help="any Hugging Face causal LM directory")
    core.add_argument("--bundle", required=True, help="core.yaml, eval_meta_data.csv, eval_data/")
    core.add_argument("--max-per-task", type=int, help="items per task (after the seeded shuffle)")
    core.add_argument(
        "--batch-size",
        type=int,
        default=16,
        help="sequences per forward pass; 1: the plain computation, one whole sequence each",
    )
    core.add_argument("--out", help="also write the result as JSON here")
    core.set_defaults(run=run_eval_core)
    probes = eval_commands.add_parser("probes", help="share of probe prompts whose answer greedy decoding gives")
    probes.add_argument("--model", required=True, help="model directory or training checkpoint")
    probes.add_argument("--data", required=True, help="jsonl of {prompt, answer} (the default's probes.jsonl)")
    probes.add_argument("--out", help="also write the result as JSON here")
    probes.set_defaults(run=run_eval_probes)


def add_generation_parsers(commands) -> None:
    generate = commands.add_parser("generate", help="continue a prompt with a model directory")
    generate.add_argument("--model", required=True, help="model directory or training checkpoint")
    generate.add_argument("--prompt", required=True, help="text to continue")
    generate.add_argument("--max-new-tokens", type=int, default=40, help="tokens to add")
    generate.add_argument("--temperature", type=float, default=0.8, help="0 for greedy")
    generate.add_argument("--seed", type=int, default=0, help="sampling seed")
    generate.set_defaults(run=run_generate)
    talk = commands.add_parser("chat", help="talk to a chat model: streamed, multi-turn, /help lists the commands")
    talk.add_argument("--model", required=True, help="model directory or training checkpoint")
    talk.add_argument("--max-new-tokens", type=int, default=128, help="reply budget")
    talk.add_argument("--temperature", type=float, default=0.7, help="0 for greedy")
    talk.add_argument("--top-k", type=int, default=50, help="sample among the k likeliest tokens (0: all)")
    talk.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (1.0: off)")
    talk.add_argument("--seed", type=int, default=0, help="sampling seed")
    talk.set_defaults(run=run_chat)
    playground = commands.add_parser("playground", help="a local web page: one prompt, several checkpoints' outputs")
    playground.add_argument(
        "--runs", nargs="+", required=True, help="run directories, or directories of runs (e.g. runs/tiny)"
    )
    playground.add_argument("--port", type=int, default=7860, help="0 picks a free port")
    playground.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    playground.set_defaults(run=run_playground)


def _add_model_choice(parser: argparse.ArgumentParser) -> None:
    choice = parser.add_mutually_exclusive_group(required=True)
    choice.add_argument("--preset", help=f"a named preset: {PRESETS}")
    choice.add_argument("--config", help="YAML with ScratchConfig keys and an optional `preset:`")


def _model_config(args):
    from .model.presets import model_config_from

    return model_config_from(args.preset, args.config)


def run_model_info(args) -> None:
    from .model.info import model_stats

    stats = model_stats(_model_config(args), args.seq_len)
    if args.json:
        print(json.dumps(stats))
        return
    for key, value in stats.items():
        print(f"{key:22s} {value:>16,}")


def run_model_init(args) -> None:
    from .model.files import init_model

    model, _ = init_model(_model_config(args), args.out, args.tokenizer, args.seed)
    print(f"wrote {args.out}: {model.num_parameters():,} parameters")


def run_export(args) -> None:
    from .card import write_model_card, write_plain_model_card
    from .model.files import load_model_from, resolved_format, save_model

    source = Path(args.checkpoint)
    run, step = run_of(source)
    model, tokenizer = load_model_from(source)
    plan = run.read_plan() if run is not None else {}
    if "seq_len" in plan and not getattr(model.config, "training_seq_len", None):
        model.config.training_seq_len = plan["seq_len"]  # `eval bpb` measures at the length it was trained with
    out = save_model(model, tokenizer, args.out, args.format)
    card = write_model_card(run, training_data(run), out, step) if run is not None else write_plain_model_card(out)
    print(f"wrote {out} ({resolved_format(args.format, model.config)}) with its model card {card.name}")


def run_of(source: Path):
    """(the run a model directory comes from, the step) for its model card: a checkpoint
    runs/<run>/<stage>/checkpoints/step_N is its parent's parent's, a run's export/ its parent's;
    (None, None) for any other directory."""
    from .run_dir import RunDir, checkpoint_step

    source = source.resolve()
    if (source / "COMPLETE").is_file():  # ours (run_dir.py's layout), unless copied out of its run
        run = RunDir(source.parent.parent)
        return (run, checkpoint_step(source)) if run.plan_file.is_file() else (None, None)
    run = RunDir(source.parent)
    return (run, None) if source == run.export.resolve() and run.plan_file.is_file() else (None, None)


def training_data(run) -> list[str]:
    """The card's data lines: the shards' sources, when the run's config names shards that are here."""
    data_dir = read_yaml(run.config_file).get("data_dir") if run.config_file.is_file() else None
    if data_dir and (Path(data_dir) / "manifest.json").is_file():
        from .train.loop import data_description

        return data_description(data_dir)
    return [f"see {run.config_file if run.config_file.is_file() else run.path}"]


def run_tokenizer_train(args) -> None:
    from .data.sources import Source
    from .tokenization import sample_texts, train_tokenizer

    sources = [Source.parse(spec, args.text_column) for spec in args.input]
    for source in sources:
        source.check()
    stats = train_tokenizer(sample_texts(sources, args.max_chars), args.vocab_size, args.out)
    print(f"wrote {args.out}: {json.dumps(stats)}")


def run_data_default(args) -> None:
    from .data.default import write_default

    counts = write_default(args.out, seed=args.seed, tokens=args.tokens, countries=args.countries)
    print(f"wrote {args.out}: {json.dumps(counts)}")


def run_data_prepare(args) -> None:
    from .data.prepare import prepare, read_prepare_config

    manifest = prepare(read_prepare_config(read_yaml(args.config), where=args.config), args.out)
    for source in manifest["sources"]:
        train, val = source["train"], source["val"]
        print(
            f"{source['name']:>12s}  weight {source['weight']:.3f}  train {train['tokens']:>12,} tokens "
            f"({train['documents']:,} docs)  val {val['tokens']:>10,} tokens"
        )
    print(f"wrote {args.out} in {manifest['seconds']:.1f}s")


def run_speedrun(args) -> None:
    from .speedrun import speedrun

    speedrun(args.out, args.recipe)


def run_push(args) -> None:
    from .hub import push

    print(f"pushed {args.folder}: {push(args.folder, args.repo_id, args.revision, args.private)}")


def run_pull(args) -> None:
    from .hub import pull

    print(f"pulled {args.spec} into {pull(args.spec, args.out)}")


def run_rehearsal(*args):
    """plan --rehearse (train/rehearse.py imports train/plan.py, so plan calls it through here)."""
    from .train.rehearse import run_rehearsal as rehearse

    return rehearse(*args)


def run_status(args) -> None:
    import time

    from .train.status import summarize

    while True:
        text = summarize(args.run_dir)
        if not args.watch:
            print(text)
            return
        print("\033[2J\033[H" + text, flush=True)
        time.sleep(args.watch)


def run_plot(args) -> None:
    from .report import plot_loss

    print(f"wrote {plot_loss(args.run_dir)}")


def run_report(args) -> None:
    from .report import build_report

    written = build_report(args.run_dirs, args.out)
    print(f"wrote {written}")
    stages = json.loads((written.parent / "report.json").read_text())["stages"]
    for name, stage in stages.items():
        if stage.get("finished") is False:
            print(f"note: {name} is unfinished (step {stage['steps']:,} of {stage['total_steps']:,})", file=sys.stderr)


def run_eval_chat(args) -> None:
    from .disk import read_rows
    from .eval.chat import chat_eval
    from .model.files import load_for_evaluation

    model, tokenizer = load_for_evaluation(args.model)
    rows = read_rows(args.data, ("messages", "answer"))
    _report(chat_eval(model, tokenizer, rows, args.max_new_tokens, progress=True), args.out)


def run_eval_preference(args) -> None:
    from .disk import read_rows
    from .eval.chat import preference_eval
    from .model.files import load_for_evaluation

    model, tokenizer = load_for_evaluation(args.model)
    reference = load_for_evaluation(args.reference, with_tokenizer=False)[0] if args.reference else None
    rows = read_rows(args.data, ("prompt", "chosen", "rejected"))
    _report(preference_eval(model, tokenizer, rows, reference, args.beta, progress=True), args.out)


def run_eval_bpb(args) -> None:
    from .data.shards import TokenShards
    from .eval.bpb import evaluate_bpb, token_byte_lengths
    from .model.files import load_for_evaluation

    model, tokenizer = load_for_evaluation(args.model)
    shards = TokenShards(args.data, tokenizer)
    seq_len, why = bpb_window(args.seq_len, model.config)
    print(f"scratchlm: windows of {seq_len} tokens ({why})", file=sys.stderr)
    token_bytes = token_byte_lengths(tokenizer, model.config.vocab_size)
    result = evaluate_bpb(model, shards, token_bytes, seq_len, args.batch_size, args.max_windows, progress=True)
    _report({**result, "seq_len": seq_len}, args.out)


def bpb_window(given: int | None, config) -> tuple[int, str]:
    """The window `eval bpb` measures with, and why: as given, else the length the model was trained with
    (its export records it), else its context. A run's own val bpb uses its training length: so does this."""
    trained = getattr(config, "training_seq_len", None)
    if given:
        return given, "--seq-len" + (f"; it was trained on {trained}" if trained and trained != given else "")
    if trained:
        return trained, "the length it was trained with; --seq-len to change"
    return config.max_position_embeddings, "its context: it records no training length; --seq-len to change"


def run_eval_core(args) -> None:
    from accelerate import PartialState

    from .eval.core import evaluate_core, load_bundle
    from .model.files import load_for_evaluation

    state = PartialState()  # under `accelerate launch`, the processes split the items
    tasks = load_bundle(args.bundle)
    model, tokenizer = load_for_evaluation(args.model, device=state.device)
    result = evaluate_core(model, tokenizer, tasks, args.max_per_task, args.batch_size, progress=state.is_main_process)
    if state.is_main_process:
        _report(result, args.out)


def run_eval_probes(args) -> None:
    from .disk import read_rows
    from .eval.probes import probe_accuracy
    from .model.files import load_for_evaluation

    rows = read_rows(args.data, ("prompt", "answer"))
    model, tokenizer = load_for_evaluation(args.model)
    _report(probe_accuracy(model, tokenizer, rows, progress=True), args.out)


def _report(result: dict, out: str | None) -> None:
    print(json.dumps(result, indent=1))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1))


def run_generate(args) -> None:
    import torch

    from .chat import sampling_options
    from .model.files import load_for_evaluation

    model, tokenizer = load_for_evaluation(args.model)
    torch.manual_seed(args.seed)
    inputs = tokenizer(args.prompt, return_tensors="pt").to(model.device)
    output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, **sampling_options(args.temperature))
    print(tokenizer.decode(output[0, inputs.input_ids.shape[1] :], skip_special_tokens=True))


def run_chat(args) -> None:
    import torch

    from .chat import chat, sampling_options
    from .model.files import load_for_evaluation

    model, tokenizer = load_for_evaluation(args.model)
    torch.manual_seed(args.seed)
    chat(model, tokenizer, sampling_options(args.temperature, args.top_k, args.top_p), args.max_new_tokens)


def run_playground(args) -> None:
    from .playground import serve

    serve(args.runs, args.host, args.port)


if __name__ == "__main__":
    sys.exit(main())
