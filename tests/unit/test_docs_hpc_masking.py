"""docs/hpc.md masking scripts: real flags, the three SLURM steps chained (issue 20)."""

from __future__ import annotations

import json
import shlex
import stat
import subprocess
from pathlib import Path

from test_docs import DOCS, _bash_blocks, _gen_usage


def _script(marker: str) -> str:
    blocks = [b for b in _bash_blocks((DOCS / "hpc.md").read_text()) if marker in b]
    assert len(blocks) == 1, marker
    return blocks[0]


def _run(script: str, tmp_path: Path, tools: dict[str, str], **env: str):
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    for name, body in tools.items():
        path = bindir / name
        path.write_text("#!/bin/bash\n" + body)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "job.sh").write_text(script)
    full_env = {"PATH": f"{bindir}:/usr/bin:/bin", "USER": "tester", "HOME": str(tmp_path),
                "WORK_DIR": str(tmp_path / "work"), **env}
    return subprocess.run(["bash", str(tmp_path / "job.sh")], env=full_env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=30)


def test_slurm_array_script_chains_models_shards_merge(tmp_path):
    gen = _gen_usage()
    log = tmp_path / "sbatch.jsonl"
    # a fake sbatch: records its arguments, answers a job id like --parsable does
    sbatch = ("n=$(( $(cat " + f"{log} 2>/dev/null | wc -l) + 100 ))\n"
              "python3 -c 'import json,sys; print(json.dumps(sys.argv[1:]))' \"$@\" >> "
              f"{log}\necho $n\n")
    script = _script("models job -> array of N_SHARDS masking jobs")
    res = _run(script, tmp_path, {"sbatch": sbatch}, N_SHARDS="4")
    assert res.returncode == 0, res.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(calls) == 3

    def option(call, name):
        return [a.split("=", 1)[1] for a in call if a.startswith(name + "=")]

    def eegfmri_args(call, task: str = "3"):
        wrap = call[call.index("--wrap") + 1].replace("${SLURM_ARRAY_TASK_ID}", task)
        argv = shlex.split(wrap)
        assert argv[:3] == ["singularity", "run", "--cleanenv"]
        image = next(i for i, a in enumerate(argv) if a.endswith(".sif"))
        return gen.parse_command(argv[image + 1:])

    models, shards, merge = calls
    first = eegfmri_args(models)
    assert first.models_only and not first.masking_shard
    assert option(shards, "--array") == ["1-4"] and option(shards, "--dependency") == [
        "afterok:100"]
    assert eegfmri_args(shards).masking_shard == "3/4"
    assert eegfmri_args(shards, task="4").masking_shard == "4/4"
    last = eegfmri_args(merge)
    assert option(merge, "--dependency") == ["afterok:101"]
    assert not last.models_only and not last.masking_shard
    for call in calls:  # same options everywhere (parts fingerprint them)
        args = eegfmri_args(call)
        assert (args.analysis_level, str(args.work_dir), args.device) == (
            "group", "/work", "cuda")


def test_torchrun_node_script(tmp_path):
    gen = _gen_usage()
    log = tmp_path / "singularity.args"
    res = _run(_script("#SBATCH --job-name=eegfmri-node"), tmp_path,
               {"singularity": f'printf "%s\\n" "$@" > "{log}"\n'}, GPUS="8")
    assert res.returncode == 0, res.stderr
    args = log.read_text().splitlines()
    assert args[:3] == ["exec", "--cleanenv", "--nv"]
    run = args[args.index("torchrun"):]
    module = run.index("-m")
    from torch.distributed.run import get_args_parser

    launcher = get_args_parser().parse_args(run[1:module + 2] + ["x"])
    assert launcher.standalone and launcher.nproc_per_node == "8" and launcher.module
    parsed = gen.parse_command(run[module + 2:])
    assert parsed.analysis_level == "group" and parsed.device == "cuda"
    assert not parsed.masking_shard and not parsed.models_only
