"""Every command README.md and docs/ show runs, in a reduced form (the documentation stays honest).

The fenced bash blocks, indented code blocks and inline `python scripts/...` / `python -m ...`
spans of README.md and of every docs/**/*.md are parsed; every command is mapped by its script (or module) to a reduced
invocation (the README arguments plus the script's `--quick` mode or tiny `--config.` overrides
appended, which win because they come last) and run as a subprocess with PYTHONPATH set to this
repository, in a scratch directory holding links to configs/, scripts/, bk_jax/ and tests/ (so
`runs/` and `results/` outputs never touch the checkout). It must exit with the status README
documents (0 unless the mapping says otherwise). A command whose script has no mapping FAILS
`test_every_readme_command_is_mapped`: add a reduction to REDUCTIONS when the docs gain a command.

The fresh-machine lines (venv + pip install + X) are tested as X without the install.
The default run covers the quickstart line, streaming evaluations of its checkpoint, the merge of
the quality-anchor JSONs, the data CLI and the per-file pytest selections; every other command is
marked slow (each trains or benchmarks several models).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))  # also when run via a link
README = os.path.join(ROOT, "README.md")
#: every file whose commands are run: README.md, then docs/**/*.md in sorted order
DOCS = [README] + sorted(glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))

#: tiny model / data / schedule for every config-driven training or evaluation
TINY = ["--config.model.d_model=16", "--config.model.n_layers=1", "--config.model.n_heads=2",
        "--config.model.d_ff=32", "--config.model.mamba2.headdim=8", "--config.train.seq_len=64", "--config.train.sequence_lengths=(32,64)",
        "--config.train.tokens_per_batch=0", "--config.train.batch_size=2",
        "--config.train.steps_per_length=2", "--config.train.log_interval=1",
        "--config.data.data_limit=20000", "--config.eval.every_steps=2", "--config.eval.batches=1", "--config.eval.samples=0",
        "--config.eval.chunk_size=1024", "--config.logging.progress_bar=false"]
STREAM = ["--eval_tokens", "4096", "--chunk_size", "1024", "--no_progress"]
#: placeholders README uses in commands -> what the reduced run passes
PLACEHOLDERS = {"CFG": "configs/quickstart.py", "FILE": "bk_jax/data/assets/tinyshakespeare.txt"}


@dataclasses.dataclass(frozen=True)
class Reduced:
  argv: tuple[str, ...]  # after `python`
  slow: bool = False
  rc: int = 0  # the exit status README documents for this example
  needs: str | None = None  # a run directory (save_dir) that must exist first


def _config_of(args: list[str]) -> str | None:
  return next((args[i + 1] for i, a in enumerate(args[:-1]) if a == "--config"), None)


#: one CPU device, the bundled text with bytes: for the scale configs (FSDP meshes, BPE on a corpus
#: README points at /data/...)
ONE_DEVICE = ["--config.mesh.data=-1", "--config.mesh.fsdp=1", "--config.mesh.tensor=1",
              "--config.mesh.sequence=1"]
LOCAL_TEXT = ["--config.data.dataset=text", f"--config.data.path={PLACEHOLDERS['FILE']}",
              "--config.data.tokenizer=byte", "--config.model.dtype=float32"]


def _local(args):
  """Paths outside the scratch directory (/data/..., /checkpoints/...) become local ones."""
  out, extra = [], []
  for a in args:
    key, _, val = a.partition("=")
    if key == "--config.data.path" and os.path.isabs(val):
      extra = LOCAL_TEXT
      continue
    if key == "--config.save_dir" and os.path.isabs(val):
      a = f"{key}=runs/{os.path.basename(val)}"
    out.append(a)
  return out, extra


def _train(args):
  cfg = _config_of(args)
  args, extra = _local(args)
  if cfg and "green_selective" in cfg:  # TINY's 2 heads: one Green head and one selective head
    extra = [*extra, "--config.model.bk_selective_heads=1"]
  return Reduced(("scripts/train.py", *args, *TINY, *ONE_DEVICE, *extra),
                 slow=cfg != "configs/quickstart.py")


def _generate(args):
  args = [re.sub(r"checkpoint_seq\d+_(final|best)", r"checkpoint_seq64_\1", a) for a in args]
  run = args[args.index("--checkpoint_dir") + 1]
  return Reduced(("scripts/generate.py", *args, "--max_new_tokens", "8"), slow=True, needs=run)


def _plan_memory(args):
  # a tiny model of the same config file on at most 8 fake devices (a mesh axis over 2 -> 2)
  args = [re.sub(r"=(\d+)", lambda m: "=" + str(min(int(m.group(1)), 2)), a) if i and args[i - 1] == "--mesh"
          else a for i, a in enumerate(args)]
  return Reduced(("scripts/plan_memory.py", *args, "--config.model.d_model=64",
                  "--config.model.n_layers=2", "--config.model.n_heads=4", "--config.model.d_ff=128",
                  "--config.model.transformer.n_heads=2", "--config.train.tokens_per_batch=4096",
                  "--seq_len", "1024", "--max_devices", "8", "--out", "results/scaling/memory_plan"), slow=True)


def _train_long_context(args):
  args = list(args)
  if "--eval_only" in args:  # evaluates save_dir's latest checkpoint: a reduced run made first
    cfg = _config_of(args)
    needs = "runs/quickstart" if cfg == "configs/quickstart.py" else "runs/default"
    return Reduced(("scripts/train_long_context.py", *args, *TINY, "--eval_tokens", "4096"),
                   slow=True, needs=needs)
  ref = ["--seq_len", "64", "--epochs", "1", "--d_model", "16", "--n_layers", "1", "--n_heads", "2",
         "--d_ff", "32", "--batch_size", "2", "--data_limit", "20000"]
  if "--sequence_lengths" in args:
    ref += ["--sequence_lengths", "32", "64"]
  return Reduced(("scripts/train_long_context.py", *args, *ref, *TINY), slow=True)


def _eval_streaming(args):
  args = [re.sub(r"checkpoint_seq\d+_final", "checkpoint_seq64_final", a) for a in args]
  run = args[args.index("--checkpoint_dir") + 1]
  return Reduced(("scripts/eval_streaming.py", *args, *STREAM), slow=run != "runs/quickstart", needs=run)


def _quality_anchor(args):
  if "--merge" in args:  # no training: fast, on copies of the committed JSONs
    return Reduced(("scripts/quality_anchor.py", *args))
  # its own --out: the merge example's input JSONs in the scratch results/ stay the committed ones
  return Reduced(("scripts/quality_anchor.py", *args, "--quick", "--kinds", "resnet_bk",
                  "--out", "results/quality/quality_anchor_reduced"), slow=True)


def _compare_models(args):
  args = [a for a in args if a != "--quick"]
  out = ()
  # the script's default --out is one per suite, where calls at the suite's sizes add their
  # rows and stages to each other (the docs chain such calls); a call at other sizes (--tokens,
  # --dropout) gets its own, as a user would give it, whatever order the workers ran them in
  sizes = [f"{a[2:]}{args[i + 1]}" for i, a in enumerate(args[:-1]) if a in ("--tokens", "--dropout")]
  if sizes and "--out" not in args:
    suite = args[args.index("--suite") + 1] if "--suite" in args else "gpu"
    out = ("--out", f"results/quality/compare_models/{suite}_quick_{'_'.join(sizes)}")
  return Reduced(("scripts/compare_models.py", "--quick", *args,
                  *(() if "--rows" in args else ("--rows", "resnet_bk")), *out), slow=True)


def _pytest(args):
  # the selection must exist and collect; running the suite inside the suite is the CI's job
  # (a pattern such as tests/test_models_*.py is expanded here, as the shell would)
  expanded = [os.path.relpath(f, ROOT) for a in args if a.startswith("tests/")
              for f in sorted(glob.glob(os.path.join(ROOT, a)))]
  if any(not glob.glob(os.path.join(ROOT, a)) for a in args if a.startswith("tests/")):
    raise KeyError(f"python -m pytest {' '.join(args)}: no such test file")
  opts = [a for a in args if not a.startswith("tests/")]
  return Reduced(("-m", "pytest", *opts, *expanded, "--collect-only", "-p", "no:cacheprovider"),
                 slow=not expanded)


def _quick(name, *extra):
  return lambda args: Reduced((f"scripts/{name}.py", *args, "--quick", *extra), slow=True)


def _induction_anchor(args):
  # the default block, except for the selective block alone (the model recall_memory.py reads)
  kinds = args[args.index("--kinds") + 1] if "--kinds" in args else ""
  keep = () if kinds == "resnet_bk:selective" else ("--kinds", "resnet_bk")
  return Reduced(("scripts/induction_anchor.py", *args, "--quick", *keep), slow=True)


#: script (or `-m module`) -> reduction of its README arguments
REDUCTIONS = {
    "scripts/train.py": _train,
    "scripts/train_long_context.py": _train_long_context,
    "scripts/eval_streaming.py": _eval_streaming,
    "scripts/eval_extrapolation.py": lambda args: Reduced(
        ("scripts/eval_extrapolation.py", *args, *TINY, "--max_log2", "7", "--samples", "4",
         "--token_budget", "1024", "--no_progress"), slow=True),
    "scripts/quality_anchor.py": _quality_anchor,
    "scripts/generate.py": _generate,
    "scripts/plan_memory.py": _plan_memory,
    # every stage of the GPU suite and every row of the comparison run in their own slow tests
    # (test_reports_gpu_suite.py, test_reports_compare.py); here each command runs one of them
    "scripts/benchmark.py": lambda args: Reduced(
        ("scripts/benchmark.py", *args, "--quick", "--kinds", "resnet_bk")
        if "--suite" not in args else ("scripts/benchmark.py", *args, "--quick", "--stages",
                                       "models:resnet_bk"), slow=True),
    "scripts/induction_anchor.py": _induction_anchor,
    "scripts/recall_memory.py": lambda args: Reduced(
        ("scripts/recall_memory.py", *args, "--max_log2", "7", "--samples", "4"), slow=True,
        needs=args[args.index("--checkpoint_dir") + 1]),
    "scripts/compare_stability.py": _quick("compare_stability", "--seeds", "0", "--lengths", "16",
                                           "--kinds", "resnet_bk"),
    "scripts/ablations.py": _quick("ablations"),
    "scripts/compare_models.py": _compare_models,
    "scripts/bench_ops.py": _quick("bench_ops", "--methods", "scan"),
    "scripts/bench_chunkwise.py": _quick("bench_chunkwise"),
    "scripts/bench_data.py": lambda args: Reduced(
        ("scripts/bench_data.py", *args, "--seq_lens", "64", "--tokens_per_batch", "256",
         "--batches", "2", "--repeats", "1", "--no_step"), slow=True),
    "scripts/bench_attention.py": lambda args: Reduced(
        ("scripts/bench_attention.py", *args, "--d-models", "32", "--lengths", "64", "--repeats", "1"),
        slow=True),
    "scripts/bench_models.py": lambda args: Reduced(
        ("scripts/bench_models.py", *args, "--kinds", "resnet_bk", "--lengths", "64",
         "--tokens-per-step", "128", "--repeats", "1", "--d-model", "16", "--n-layers", "1"), slow=True),
    "scripts/bench_sharding.py": lambda args: Reduced(
        ("scripts/bench_sharding.py", *args, "--devices", "2", "--seq_len", "256", "--steps", "1",
         "--meshes", "1,1,1,2", "2,1,1,1", "1,1,1,2:1", "1dev:1"), slow=True),
    "-m pytest": _pytest,
    "-m bk_jax.data": lambda args: Reduced(("-m", "bk_jax.data", *args)),
}
#: run directory -> the README command whose reduced form creates it
MAKES = {"runs/quickstart": "python scripts/train.py --config configs/quickstart.py",
         "runs/seq32k": "python scripts/train.py --config configs/seq32k.py",
         "runs/multi_length": "python scripts/train.py --config configs/multi_length.py",
         "runs/default": "python scripts/train_long_context.py --seq_len 8192 --epochs 5",
         "runs/induction/runs/resnet_bk_selective":
             "python scripts/induction_anchor.py --kinds resnet_bk:selective --out runs/induction"}


def readme_commands(text: str, name: str = "README.md") -> list[tuple[str, str]]:
  """(command, where) for every `python` command in fenced/indented blocks and inline spans.

  Args:
    text: a markdown file's text.
    name: its path relative to the repository, for `where` ("docs/results.md:12").
  """
  cmds, lines, fence, i = [], text.splitlines(), None, 0

  def joined(i):
    buf = lines[i]
    while buf.rstrip().endswith("\\") and i + 1 < len(lines):
      i += 1
      buf = buf.rstrip()[:-1] + " " + lines[i].strip()
    return buf.strip(), i

  while i < len(lines):
    m = re.match(r"^\s*```(\w*)", lines[i])
    if m:
      fence = None if fence is not None else m.group(1)
    elif fence in ("bash", "sh", "shell", "") and re.search(r"\bpython3? ", lines[i]) \
        and not lines[i].lstrip().startswith("#"):
      cmd, j = joined(i)
      cmds.append((cmd, f"{name}:{i + 1}"))
      i = j
    elif fence is None and re.match(r"^    python3? ", lines[i]):
      cmd, j = joined(i)
      cmds.append((cmd, f"{name}:{i + 1}"))
      i = j
    i += 1
  prose = re.sub(r"^\s*```.*?^\s*```", "", text, flags=re.S | re.M)
  for m in re.finditer(r"`([^`]+)`", prose):
    span = " ".join(m.group(1).split())
    if re.match(r"python3? (scripts/|-m )", span):
      cmds.append((span, f"{name} (inline)"))
  return cmds


#: launchers README wraps a command in (multi-host); the reduced run is the inner command alone
LAUNCHERS = ("srun", "mpirun", "exec", "env")


def split_command(cmd: str) -> tuple[str, list[str]]:
  """(script key, args) of one README command.

  The install steps of a fresh-machine line, `VAR=value` prefixes and launchers (`srun bash -c
  '...'`, `exec`) are dropped: what remains must be one `python ...` command, else KeyError.
  """
  parts = [p.strip() for p in cmd.split("&&")]
  rest = [p for p in parts if not re.match(r"^(python3? -m venv|\. |source |pip install)", p)]
  if len(rest) != 1:
    raise KeyError(f"README command {cmd!r}: one command expected after the install steps")
  argv = shlex.split(rest[0], comments=True)
  while argv and argv[0] not in ("python", "python3"):
    if argv[0] in LAUNCHERS or re.match(r"^[A-Z_][A-Z0-9_]*=", argv[0]):
      argv = argv[1:]
    elif argv[:2] in (["bash", "-c"], ["sh", "-c"]) and len(argv) == 3:
      argv = shlex.split(argv[2], comments=True)
    else:
      raise KeyError(f"README command {cmd!r}: not a python command")
  if not argv:
    raise KeyError(f"README command {cmd!r}: not a python command")
  argv = [PLACEHOLDERS.get(a, a) for a in argv[1:]]
  if argv[0] == "-m":
    return f"-m {argv[1]}", argv[2:]
  return argv[0], argv[1:]


def reduce(cmd: str) -> Reduced:
  key, args = split_command(cmd)
  if key not in REDUCTIONS:
    raise KeyError(f"README command {cmd!r}: no reduced form for {key} in tests/test_readme_commands.py")
  return REDUCTIONS[key](args)


COMMANDS = [c for path in DOCS for c in readme_commands(open(path).read(), os.path.relpath(path, ROOT))]


def _unique():
  seen, out = set(), []
  for cmd, where in COMMANDS:
    try:
      r = reduce(cmd)
    except KeyError:
      continue  # reported by test_every_readme_command_is_mapped
    if r.argv not in seen:
      seen.add(r.argv)
      marks = [pytest.mark.slow] if r.slow else []
      out.append(pytest.param(cmd, r, id=f"{where}:{' '.join(shlex.split(cmd, comments=True)[-6:])}"[:90],
                              marks=marks))
  return out


def test_readme_has_the_fresh_machine_lines_first():
  """README's first two commands are the fresh-machine lines (install + quickstart, install + tests)."""
  first = [cmd for cmd, _ in readme_commands(open(README).read())[:2]]
  assert first == [
      'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]" && '
      "python scripts/train.py --config configs/quickstart.py",
      'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]" && python -m pytest -q']


def test_every_readme_command_is_mapped():
  assert len(COMMANDS) > 20  # the parser finds the commands at all
  assert {w.split(":")[0].split(" ")[0] for _, w in COMMANDS} >= {"README.md", "docs/results.md"}
  missing = []
  for cmd, where in COMMANDS:
    try:
      reduce(cmd)
    except KeyError as e:
      missing.append(f"{where}: {e}")
  assert not missing, "\n".join(missing)


def test_an_unmapped_or_wrong_command_is_reported():
  with pytest.raises(KeyError, match="no reduced form"):
    reduce("python scripts/not_a_script.py --x 1")
  with pytest.raises(KeyError, match="no such test file"):
    reduce("python -m pytest -q tests/test_not_there.py")
  assert readme_commands("```bash\npython scripts/a.py \\\n  --b 1  # c\n```\nsee `python scripts/d.py\n--e`")\
      == [("python scripts/a.py  --b 1  # c", "README.md:2"), ("python scripts/d.py --e", "README.md (inline)")]
  assert split_command('python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]" && '
                       "python scripts/train.py --config CFG") == (
                           "scripts/train.py", ["--config", "configs/quickstart.py"])


def test_ci_script_is_what_readme_says():
  """README's sentence on .ci/run names each of its steps."""
  steps = [ln.strip() for ln in open(os.path.join(ROOT, ".ci", "run")).read().splitlines()
           if ln.strip() and not ln.startswith("#") and not ln.startswith(("set ", "cd "))]
  assert steps == ["python3 -m venv .venv-ci", ". .venv-ci/bin/activate", "pip install -q --upgrade pip",
                   'pip install -q -e ".[dev]"', "python -m pytest -q", "python -m pytest -q -m slow"]
  text = " ".join(open(README).read().split())
  for words in ("virtualenv `.venv-ci`", "upgrades pip", '`pip install -e ".[dev]"`',
                "`python -m pytest -q` and `python -m pytest -q -m slow`"):
    assert words in text, words


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
  w = tmp_path_factory.mktemp("readme")
  for d in ("configs", "scripts", "bk_jax", "tests"):
    os.symlink(os.path.join(ROOT, d), w / d)
  qa = w / "results" / "quality" / "equal_time_600s"
  qa.mkdir(parents=True)
  for f in glob.glob(os.path.join(ROOT, "results", "quality", "equal_time_600s", "*.json")):
    shutil.copy(f, qa)
  return w


def _run(reduced: Reduced, w) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=str(ROOT), BK_JAX_CACHE=str(w / "cache"), MPLBACKEND="Agg",
             JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, *reduced.argv], cwd=w, env=env, capture_output=True,
                        text=True, timeout=1200)


#: scripts that train into a save_dir
TRAINERS = ("scripts/train.py", "scripts/train_long_context.py")


@pytest.mark.parametrize("cmd, reduced", _unique())
def test_readme_command_runs(cmd, reduced, workspace):
  if reduced.needs and not os.path.isdir(workspace / reduced.needs):
    made = _run(reduce(MAKES[reduced.needs]), workspace)
    assert made.returncode == 0, f"making {reduced.needs}:\n{made.stderr[-3000:]}"
  if reduced.argv[0] in TRAINERS and not reduced.needs:
    # its own run directory: a run another command left in the same save_dir (runs/default) is
    # not this command's to continue, whatever order the workers ran them in
    digest = hashlib.sha1(" ".join(reduced.argv).encode()).hexdigest()[:12]
    reduced = dataclasses.replace(reduced, argv=(*reduced.argv, f"--config.save_dir=runs/{digest}"))
  r = _run(reduced, workspace)
  assert r.returncode == reduced.rc, (
      f"README: {cmd}\nran: python {shlex.join(reduced.argv)}\nexit {r.returncode}\n"
      f"stdout:\n{r.stdout[-2000:]}\nstderr:\n{r.stderr[-3000:]}")
