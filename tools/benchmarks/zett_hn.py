"""Zero-shot tokenizer transfer with the embedding hypernetwork, measured: the tables of
docs/hypernet.md.

    python tools/benchmarks/zett_hn.py tiny    [--workdir W]   # train, zero-shot table, ALM
    python tools/benchmarks/zett_hn.py smollm2 [--workdir W]   # the real SmolLM2-135M
    python tools/benchmarks/zett_hn.py sampler                 # tokenizers/s, tokens/s
    python tools/benchmarks/zett_hn.py throughput [--workers 1,2]   # step time, data wait
    python tools/benchmarks/zett_hn.py hn_step [--shapes VxSxNxD,...]  # the network alone, any device

`tiny` trains the hypernetwork of `experiments/zett_hn_tiny.gin` (unless `W/hn/hypernet`
exists), then scores, on the text records of `data/corpus/test.jsonl` (held out: neither
the model nor the hypernetwork saw them), the tiny teacher with its own tokenizer and,
for each unseen target tokenizer, the teacher transferred by FVT and by the hypernetwork
(`models.transfer.transfer`, as `python -m tokenkit.zett` runs it). "Gap closed" is the
share of FVT's excess bits per byte over the base model that the hypernetwork removes.
It then runs `experiments/alm_subword.gin` with the same steps from FVT (as the file is)
and from the hypernetwork's transfer (written by `python -m tokenkit.zett
--gin_param=zett.hypernet=...`, the teacher being the original model), and
`experiments/alm_subword_hypernet.gin` (FVT, with a hypernetwork over the student's
embeddings during distillation: `build_run.hypernet`), and scores the exported students
on the same test texts. Step time and data wait come from the
hypernetwork run's `metrics.jsonl` (the first logged interval, which holds compilation,
left out).

`smollm2` does the same zero-shot table for SmolLM2-135M-Instruct and the real Qwen2,
Llama 3 and GPT-2 tokenizers (`tools.real_assets`, `experiments/zett_hn_smollm2.gin`),
on `data/real/test_en_passages.jsonl`. `sampler` times `SampleTokenizer` on batches of the
tiny world's prose (after a warm-up that fills the piece cache), in one process.
`throughput` trains the tiny hypernetwork for a few steps per number of Grain workers
(no evaluation) and reports step time and data wait.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

TINY_MODEL = "data/models/tiny_teacher"
TINY_SPEC = "data/models/tiny_teacher:source=Llama3"
TINY_TARGETS = {
    "gemma2_sp": "data/tokenizers/gemma2_sp:source=Gemma2",
    "qwen2_bpe": "data/tokenizers/qwen2_bpe:source=Qwen2",
    "bytes": "data/models/tiny_teacher:source=Llama3:conversion=byte",
}


def _run(command: list[str], log: Path) -> float:
    """Runs a tokenkit entrypoint (output to `log`); returns its wall time in seconds."""
    start = time.perf_counter()
    with open(log, "w") as out:
        result = subprocess.run([sys.executable, "-m", *command], cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    if result.returncode:
        raise RuntimeError(f"{' '.join(command[:1])} failed; see {log}")
    return time.perf_counter() - start


def _texts(path: str) -> list[str]:
    lines = (REPO / path).read_text().splitlines()
    return [r["text"] for r in map(json.loads, lines) if r.get("text")]


def _records(workdir: Path, split: str) -> list[dict]:
    from tokenkit.training.metrics import read_metrics

    return [r for r in read_metrics(workdir) if r["split"] == split]


def zero_shot(model: str, spec: str, targets: dict[str, str], hypernet_dir: Path,
              texts: list[str]) -> list[tuple[str, float, float, float]]:
    """(target, base, FVT, hypernetwork) bits per byte on `texts`."""
    from tokenkit.byteify import load_byteify_tokenizer
    from tokenkit.evaluation import scoring
    from tokenkit.evaluation.model import EvalModel
    from tokenkit.models import load_pretrained
    from tokenkit.models import transfer as transfer_lib
    import numpy as np

    from tokenkit.models import embedding_matrices, replace_vocabulary
    from tokenkit.models.hypernet import TrainedHypernet, transfer_embeddings

    def bpb(config, params, tokenizer) -> float:
        model_ = EvalModel.build(config, params, tokenizer)
        return scoring.bits_per_byte(scoring.score_texts(model_, texts, max_length=1024, show_progress=False))

    source = load_byteify_tokenizer(spec)
    config, params = load_pretrained(model)
    base = bpb(transfer_lib.with_special_tokens(config, source), params, source)
    hypernet = TrainedHypernet.load(hypernet_dir)
    # A control: the model's own tokenizer through the hypernetwork (what training on the
    # hypernetwork's text changed without any transfer).
    inputs, outputs = embedding_matrices(config, params)
    n = len(source)
    own = transfer_embeddings(hypernet, source, source, np.asarray(inputs)[:n],
                              None if outputs is None else np.asarray(outputs)[:n])
    own_config, own_params = replace_vocabulary(
        config, params, own.input_embeddings, own.output_embeddings, tokenizer_size=n,
        pad_to_multiple_of=config.vocab_size,
    )
    rows = [("(own tokenizer)", base, base, bpb(transfer_lib.with_special_tokens(own_config, source),
                                                 own_params, source))]
    for name, target_spec in targets.items():
        target = load_byteify_tokenizer(target_spec)
        by_fvt = transfer_lib.transfer(config, params, source, target)
        by_hn = transfer_lib.transfer(config, params, source, target, init="hypernet", hypernet=hypernet)
        rows.append((name, base, bpb(by_fvt.config, by_fvt.params, target),
                     bpb(by_hn.config, by_hn.params, target)))
        print(f"  {name}: base {rows[-1][1]:.4f}, FVT {rows[-1][2]:.4f}, hypernet {rows[-1][3]:.4f}", flush=True)
    return rows


def print_zero_shot(rows) -> None:
    """The table; the first row is the model's own tokenizer through the hypernetwork.

    "gap closed" is (FVT - hypernetwork) / (FVT - base); since training the hypernetwork
    on text also adapts the embeddings to that text (the first row), "vs own" measures
    the same against the hypernetwork's score on the model's own tokenizer.
    """
    own = rows[0][3]
    print("| target tokenizer | base model, own tokenizer | FVT | hypernetwork | gap closed | gap closed vs own |")
    print("|---|---|---|---|---|---|")
    for name, base, fvt, hn in rows:
        closed = f"{100 * (fvt - hn) / (fvt - base):.0f}%" if fvt != base else "-"
        versus = f"{100 * (fvt - hn) / (fvt - own):.0f}%" if fvt != base else "-"
        print(f"| {name} | {base:.3f} | {fvt:.3f} | {hn:.3f} | {closed} | {versus} |")


def run_stats(workdir: Path) -> tuple[float, float, float]:
    """(median s/step, mean data-wait fraction, median tokens/s) after the first interval."""
    records = [r for r in _records(workdir, "train") if "data_wait_fraction" in r][1:]
    sft = [r for r in records if "loss/sft" in r] or records
    return (statistics.median(r["seconds_per_step"] for r in sft),
            statistics.mean(r["data_wait_fraction"] for r in sft),
            statistics.median(r["tokens_per_second"] for r in sft))


def train_hypernet(gin_file: str, workdir: Path, extra: list[str]) -> float | None:
    if (workdir / "hypernet" / "hypernet.json").exists():
        print(f"Using the hypernetwork in {workdir / 'hypernet'}.")
        return None
    print(f"Training the hypernetwork ({gin_file}) into {workdir} ...", flush=True)
    return _run(["tokenkit.train_zett_hn", f"--gin_file={gin_file}", f"--workdir={workdir}",
                 *[f"--gin_param={p}" for p in extra]], workdir.with_suffix(".log"))


def alm_comparison(workdir: Path, hypernet_dir: Path, steps: int | None) -> list[tuple]:
    """ALM (experiments/alm_subword.gin) from FVT and from the hypernetwork's transfer."""
    target = TINY_TARGETS["gemma2_sp"]
    zett_dir = workdir / "zett_gemma2_hn"
    if not (zett_dir / "config.json").exists():
        _run(["tokenkit.zett", "--gin_file=gin/zett/tiny_llama3_to_gemma2.gin", f"--workdir={zett_dir}",
              f"--gin_param=zett.hypernet = '{hypernet_dir}'"], workdir / "zett_gemma2_hn.log")
    common = [] if steps is None else [f"train.steps = {steps}"]
    runs = {  # name: (directory, Gin file, extra bindings)
        "FVT": ("alm_from_fvt", "alm_subword", []),
        "hypernetwork (ZeTT)": ("alm_from_hypernet", "alm_subword", [
            f"build_run.student_model = '{zett_dir}'",
            f"build_run.student_tokenizer = '{target}'",
            "build_run.target_tokenizer = None",
            f"build_run.teacher_model = '{TINY_MODEL}'",
            f"build_run.teacher_tokenizer = '{TINY_SPEC}'",
        ]),
        "FVT, hypernetwork in distillation": ("alm_hypernet_in_distillation", "alm_subword_hypernet", []),
    }
    rows = []
    for name, (directory, gin_file, bindings) in runs.items():
        out = workdir / directory
        if not (out / "export" / "config.json").exists():
            print(f"ALM from {name} into {out} ...", flush=True)
            seconds = _run(["tokenkit.train", f"--gin_file=experiments/{gin_file}.gin", f"--workdir={out}",
                            *[f"--gin_param={b}" for b in common + bindings]], out.with_suffix(".log"))
            print(f"  {seconds / 60:.1f} min", flush=True)
        evals = _records(out, "eval")
        rows.append((name, out, {r["step"]: r["student/bits_per_byte"] for r in evals},
                     {r["step"]: r["student/answer_bits_per_byte"] for r in evals}))
    return rows


def print_alm(rows, test_bpb: dict[str, float]) -> None:
    steps = sorted(set.intersection(*(set(curve) for _, _, curve, _ in rows)))
    print("| ALM from | " + " | ".join(f"step {s}" for s in steps)
          + " | test texts, exported student | validation answers, last step |")
    print("|---|" + "---|" * (len(steps) + 2))
    for name, _, curve, answers in rows:
        print(f"| {name} | " + " | ".join(f"{curve[s]:.3f}" for s in steps)
              + f" | {test_bpb[name]:.3f} | {answers[steps[-1]]:.3f} |")


def exported_bpb(directory: Path, spec: str, texts: list[str]) -> float:
    from tokenkit.evaluation import scoring
    from tokenkit.evaluation.model import load_eval_model

    model = load_eval_model(str(directory), spec)
    return scoring.bits_per_byte(scoring.score_texts(model, texts, max_length=1024, show_progress=False))


def tiny(args) -> None:
    workdir = Path(args.workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    hn_dir = workdir / "hn"
    seconds = train_hypernet("experiments/zett_hn_tiny.gin", hn_dir, args.gin_param)
    if seconds is not None:
        print(f"  trained in {seconds / 60:.1f} min")
    texts = _texts("data/corpus/test.jsonl")
    print(f"Zero-shot bits per byte on {len(texts)} held-out texts (data/corpus/test.jsonl):")
    rows = zero_shot(TINY_MODEL, TINY_SPEC, TINY_TARGETS, hn_dir / "hypernet", texts)
    print_zero_shot(rows)
    sps, wait, tps = run_stats(hn_dir)
    print(f"\nHypernetwork training: {sps:.2f} s/step, {tps:,.0f} tokens/s, data wait {100 * wait:.1f}% of the step time")
    if args.skip_alm:
        return
    alm = alm_comparison(workdir, hn_dir / "hypernet", args.alm_steps)
    test = {name: exported_bpb(out / "export", TINY_TARGETS["gemma2_sp"], texts) for name, out, _, _ in alm}
    print("\nALM transfer to gemma2_sp (experiments/alm_subword.gin), student bits per byte "
          "(validation during training; test = held-out texts, exported student):")
    print_alm(alm, test)


def smollm2(args) -> None:
    from tools import real_assets

    assets = real_assets.ensure()
    workdir = Path(args.workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    targets = {name: assets.tokenizer_spec(name) for name in ("qwen2", "llama3", "gpt2")}
    model = str(assets.smollm2_dir)
    spec = assets.smollm2_tokenizer_spec
    bindings = [f"train_zett_hn.model = '{model}'", f"train_zett_hn.tokenizer = '{spec}'",
                f"train_zett_hn.eval_tokenizers = {targets!r}", *args.gin_param]
    seconds = train_hypernet("experiments/zett_hn_smollm2.gin", workdir / "hn", bindings)
    if seconds is not None:
        print(f"  trained in {seconds / 60:.1f} min")
    texts = _texts("data/real/test_en_passages.jsonl")[: args.texts]
    print(f"Zero-shot bits per byte on {len(texts)} held-out passages (data/real/test_en_passages.jsonl):")
    print_zero_shot(zero_shot(model, spec, targets, workdir / "hn" / "hypernet", texts))
    sps, wait, tps = run_stats(workdir / "hn")
    print(f"\nHypernetwork training: {sps:.2f} s/step, {tps:,.0f} tokens/s, data wait {100 * wait:.1f}% of the step time")


def sampler(args) -> None:
    import numpy as np

    from tokenkit.byteify import load_byteify_tokenizer
    from tokenkit.data import tokenizer_sampler as TS

    print("| texts | vocabulary | rows x tokens | tokenizers/s | tokens/s |")
    print("|---|---|---|---|---|")
    cases = [
        ("tiny-world prose, 32 texts", TINY_SPEC, "data/corpus/train.jsonl", 32, 16,
         dict(tokenizer_sample_min=2048, tokenizer_sample_mean=2560, tokenizer_sample_max=3072,
              tokenizer_sample_std=384, hn_surface_maxlen=6, n_token_subsample=1024)),
        ("tiny-world prose, 32 texts (whole vocabulary)", TINY_SPEC, "data/corpus/train.jsonl", 32, 16,
         dict(tokenizer_sample_min=2048, tokenizer_sample_mean=2560, tokenizer_sample_max=3072,
              tokenizer_sample_std=384, hn_surface_maxlen=6)),
    ]
    if args.real:
        from tools import real_assets

        cases.append(("real English passages, 128 texts (SmolLM2)", real_assets.ensure().smollm2_tokenizer_spec,
                      "data/real/train_en_passages.jsonl", 128, 4,
                      dict(tokenizer_sample_min=8192, tokenizer_sample_mean=16384,
                           tokenizer_sample_max=32768, tokenizer_sample_std=4096,
                           hn_surface_maxlen=8, n_token_subsample=1024)))
    for label, spec, path, n_texts, rows, options in cases:
        base = load_byteify_tokenizer(spec)
        config = TS.TokenizerSamplerConfig(texts_per_batch=n_texts, **options)
        transform = TS.SampleTokenizer(base, config, rows)
        texts = _texts(path)
        rng = np.random.default_rng(0)
        draw = lambda: [texts[i] for i in rng.integers(0, len(texts), n_texts)]  # noqa: E731
        for _ in range(args.warmup):
            transform.random_map(draw(), rng)
        tokens, start = 0, time.perf_counter()
        for _ in range(args.batches):
            batch = transform.random_map(draw(), rng)
            tokens += int(batch.rows.student.attention_mask.sum())
        elapsed = time.perf_counter() - start
        vocab = f"{config.tokenizer_sample_min}-{config.tokenizer_sample_max}"
        print(f"| {label} | {vocab} | {rows} x {config.block_size} | {args.batches / elapsed:.1f} | {tokens / elapsed:,.0f} |")


def throughput(args) -> None:
    """Short runs of experiments/zett_hn_tiny.gin (no evaluation), per worker count."""
    import tempfile

    print("| Grain workers | s/step | tokens/s | data wait (share of the step time) |")
    print("|---|---|---|---|")
    for workers in map(int, args.workers.split(",")):
        with tempfile.TemporaryDirectory() as workdir:
            _run(["tokenkit.train_zett_hn", "--gin_file=experiments/zett_hn_tiny.gin", f"--workdir={workdir}",
                  f"--gin_param=train_zett_hn.steps = {args.steps}",
                  f"--gin_param=train_zett_hn.num_workers = {workers}",
                  "--gin_param=train_zett_hn.log_interval = 10",
                  "--gin_param=train_zett_hn.eval_interval = 0",
                  "--gin_param=train_zett_hn.save_interval = 0",
                  "--gin_param=train_zett_hn.eval_at_step_zero = False",
                  "--gin_param=train_zett_hn.eval_tokenizers = {}",
                  "--gin_param=train_zett_hn.export = False"], Path(workdir) / "log")
            sps, wait, tps = run_stats(Path(workdir))
        print(f"| {workers} | {sps:.3f} | {tps:,.0f} | {100 * wait:.1f}% |", flush=True)


def hn_step(args) -> None:
    """Forward + backward of the hypernetwork over a whole vocabulary, on the default device."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from tokenkit.models import hypernet as H

    print(f"device: {jax.devices()[0].device_kind}")
    print("| config | V x S | n x D | dtype | ms forward+backward | predicted rows/s |")
    print("|---|---|---|---|---|---|")
    standard = dict(num_layers=3, num_heads=16, use_attention_mask=False, residual_alpha=1.0,
                    multiply_hidden_dim_by_num_embeddings=False)
    distill = dict(num_layers=1, use_attention=False, residual_alpha=1.0)
    cases = [(name, config, int(v), int(s), int(n), int(d))
             for name, config in (("standard", standard), ("distill", distill))
             for v, s, n, d in (part.split("x") for part in args.shapes.split(","))
             if (name == "distill") == (s == "1")]
    for name, options, v, s, n, d in cases:
        module = H.Hypernet(H.HypernetConfig(**options), d, n, s, jnp.dtype(args.dtype))
        rng = np.random.default_rng(0)
        source = jnp.asarray(rng.normal(size=(v, n, d)), jnp.float32)
        params = H.init_params(module, source[:4096])
        parts = jnp.asarray(rng.integers(0, v, (v, s)), jnp.int32)
        mask = jnp.asarray(rng.random((v, s)) < 0.4).at[:, 0].set(True)
        copied = jnp.zeros(v, bool)
        grad = jax.jit(jax.grad(lambda p: jnp.sum(H.predict(module, p, source, parts, mask, copied))))
        jax.block_until_ready(grad(params))
        start = time.perf_counter()
        for _ in range(args.repeats):
            out = grad(params)
        jax.block_until_ready(out)
        ms = 1000 * (time.perf_counter() - start) / args.repeats
        print(f"| {name} | {v} x {s} | {n} x {d} | {args.dtype} | {ms:.1f} | {v / ms * 1000:,.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    for name in ("tiny", "smollm2"):
        p = sub.add_parser(name)
        p.add_argument("--workdir", default=f"workdirs/bench_zett_hn_{name}")
        p.add_argument("--gin_param", action="append", default=[],
                       help="extra bindings for the hypernetwork run")
    sub.choices["tiny"].add_argument("--alm_steps", type=int, default=None,
                                     help="ALM steps (default: the experiment's)")
    sub.choices["tiny"].add_argument("--skip_alm", action="store_true")
    sub.choices["smollm2"].add_argument("--texts", type=int, default=64)
    p = sub.add_parser("throughput")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--workers", default="1,2")
    p = sub.add_parser("hn_step")
    p.add_argument("--shapes", default="1024x6x1x256,32896x8x2x2048,1024x8x2x2048,128256x1x1x2048",
                   help="VxSxNxD, comma-separated (S = 1: the distillation network)")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--repeats", type=int, default=5)
    p = sub.add_parser("sampler")
    p.add_argument("--batches", type=int, default=50)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--real", action="store_true", help="also the SmolLM2 case (tools.real_assets)")
    args = parser.parse_args()
    commands = {"tiny": tiny, "smollm2": smollm2, "sampler": sampler, "throughput": throughput,
                "hn_step": hn_step}
    commands[args.what](args)


if __name__ == "__main__":
    main()
