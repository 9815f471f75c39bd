"""The profiler table's bookkeeping (benchmarks/profile_step.py): thunks are matched to their HLO
instruction and summed per model operation, the transformer's blocks merged."""
from __future__ import annotations

from benchmarks.profile_step import hlo_instructions, operation_key

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
