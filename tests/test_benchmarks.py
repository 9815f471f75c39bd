"""The benchmarks' bookkeeping: the compiled-program dump (benchmarks/compiled_program.py) compares trees; the profiler table (benchmarks/profile_step.py) matches thunks to
their HLO instruction and sums them per model operation, the transformer's blocks merged; the
step-time table (benchmarks/step_time.py) runs end to end, a steps_per_call variant beside the
one-step call, with rows and ratios that agree with each other."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.profile_step import hlo_instructions, operation_key

ROOT = Path(__file__).resolve().parents[1]

HLO = """HloModule jit_train_step
%fused_computation.874 (p0: f32[8,256]) -> f32[8,65536] {
  ROOT %dot.1 = f32[8,65536]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}
}
ENTRY %main {
  %ynn_fusion.861 = f32[1576,1536]{1,0} fusion(%a, %b), kind=kCustom, metadata={op_name="jit(train_step)/jvp(VisionTransformer)/blocks_0/fc1/dot_general" stack_frame_id=249}
  %ynn_fusion.850 = f32[1576,1536]{1,0} fusion(%c, %d), kind=kCustom, metadata={op_name="jit(train_step)/jvp(VisionTransformer)/blocks_11/fc1/dot_general"}
  ROOT %copy.3 = f32[384,1152]{1,0} copy(%e)
}
"""


def test_thunks_are_matched_to_their_instruction_and_blocks_merged():
    instructions = hlo_instructions(HLO)
    assert instructions["copy.3"].startswith("f32[384,1152]{1,0} copy(")
    assert instructions["dot.1"].startswith("f32[8,65536]{1,0} dot(")
    first = operation_key("ynn_fusion.861", instructions["ynn_fusion.861"])
    other_block = operation_key("ynn_fusion.850", instructions["ynn_fusion.850"])
    assert first == other_block == ("ynn_fusion", "f32[1576,1536]{1,0}", "jvp(VisionTransformer)/blocks_*/fc1/dot_general")
    assert operation_key("copy.3", instructions["copy.3"]) == ("copy", "f32[384,1152]{1,0}", "")


def _within_rounding(printed: float, value_of, rounded: float, half_unit: float = 0.5, slack: float = 0.01) -> bool:
    """Whether `printed` lies between value_of(rounded - half_unit) and value_of(rounded + half_unit)
    (either order), up to `slack` relative: the table prints ms/step rounded to whole ms and the
    derived columns from the unrounded median."""
    ends = sorted((value_of(max(rounded - half_unit, 1e-3)), value_of(rounded + half_unit)))
    return ends[0] * (1 - slack) - 0.1 <= printed <= ends[1] * (1 + slack) + 0.1


def test_step_time_table_with_a_steps_per_call_variant():
    """Both ssl_jax rows are timed; each row's images/s and GFLOP/s are the batch and the one
    step's FLOPs (the header's GFLOP/step, from the single-step cost analysis, since XLA counts a
    scan's body once) over its ms/step; the ratio line is the ratio of the two rows."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.step_time", "--config=configs/dino_small.py:smoke",
         "--reference=none", "--steps=2", "--compare=steps_per_call=2"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {}
    for line in result.stdout.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if line.startswith("| ssl_jax"):
            rows[cells[0]] = cells
    base_label, variant_label = "ssl_jax dino vit-custom p8", "ssl_jax dino vit-custom p8 [steps_per_call=2]"
    assert set(rows) == {base_label, variant_label}, result.stdout
    batch = int(re.search(r"batch (\d+)", result.stdout).group(1))
    gflop_per_step = float(re.search(r"model ([\d.e+-]+) GFLOP/step", result.stdout).group(1))
    assert gflop_per_step > 0
    ms = {}
    for label, (_, _, ms_per_step, images_per_s, gflop_per_s, _, _) in rows.items():
        ms[label] = float(ms_per_step)
        assert _within_rounding(float(images_per_s), lambda m: batch / (m / 1000), ms[label]), rows[label]
        assert _within_rounding(float(gflop_per_s), lambda m: gflop_per_step / (m / 1000), ms[label]), rows[label]
    ratio = re.search(re.escape(f"speed ratio, {base_label} / {variant_label}: ") + r"([\d.]+)x", result.stdout)
    assert ratio, result.stdout
    assert _within_rounding(float(ratio.group(1)), lambda m: ms[variant_label] / m, ms[base_label])
    assert _within_rounding(float(ratio.group(1)), lambda m: m / ms[base_label], ms[variant_label])


@pytest.mark.slow  # the suite's 15-minute CI budget: run with -m slow
def test_compiled_program_is_the_same_for_the_same_step_and_differs_for_another(tmp_path):
    """benchmarks/compiled_program.py: two writes of one config's step are byte-identical (what a
    refactor is compared by), a changed hyper-parameter changes both files, and the source
    locations, metadata and stack frames are gone."""
    import runpy

    from benchmarks.compiled_program import without_source_information, write_program

    assert "metadata" not in without_source_information(HLO) and "stack_frame_id" not in without_source_information(HLO)
    config = runpy.run_path(str(ROOT / "configs" / "dino_small.py"))["get_config"]("smoke")
    write_program(config, str(tmp_path / "a"))
    write_program(config, str(tmp_path / "b"))
    config.method.teacher_temp = 0.05
    write_program(config, str(tmp_path / "c"))
    for suffix in (".stablehlo", ".hlo"):
        a, b, c = ((tmp_path / (name + suffix)).read_text() for name in "abc")
        assert a == b and a != c, suffix
        assert "loc(" not in a and "metadata=" not in a and "FunctionNames" not in a and "StackFrames" not in a
