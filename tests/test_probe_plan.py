"""The probe's decode plan without a file: which times, which frame of a GOP stands for each target, which
packets the decoder gets and which it may drop, and the dense fallback's pick. Then the plan executed
on a real file agrees with what a plan-by-hand says it should keep."""

from __future__ import annotations

import pytest

from pipeline.synthetic import CONCEPTS, encode_video, render_frames
from stages.media.decode import (
    DecodePlan,
    StreamFacts,
    frames_for_targets,
    nearest_frames,
    open_media,
    packets_to_feed,
    plan_decode,
    probe_file,
    stream_facts,
)

FACTS = StreamFacts(time_base=1 / 15360, start=0.0, duration=4.0, fps=30.0, width=128, height=96)


def test_a_stream_with_timestamps_gets_a_sparse_plan_at_segment_centres():
    plan = plan_decode(FACTS, 4)
    assert plan.sparse and plan.targets == (0.5, 1.5, 2.5, 3.5)
    assert plan.target_pts == (7680, 23040, 38400, 53760)


@pytest.mark.parametrize(
    "facts, sparse, targets",
    [
        (FACTS, False, (0.5, 1.5, 2.5, 3.5)),  # asked for a dense decode
        (StreamFacts(None, 0.0, 4.0, 30.0, 128, 96), True, (0.5, 1.5, 2.5, 3.5)),  # no time base
        (StreamFacts(1 / 90000, 0.0, 0.0, 30.0, 128, 96), True, ()),  # no duration: learnt from frames
    ],
)
def test_without_timestamps_to_aim_at_the_plan_is_dense(facts, sparse, targets):
    assert plan_decode(facts, 4, sparse=sparse) == DecodePlan(False, targets)


def test_each_target_gets_the_first_frame_at_or_after_it_inside_its_gop():
    gop = [0, 3000, 1000, 2000, 6000, 4000, 5000]  # decode order of a GOP with B-frames
    assert frames_for_targets(gop, [900, 2000, 5500, 9000], first=0) == {0: 1000, 1: 2000, 2: 6000}
    assert frames_for_targets(gop, [900, 2000, 5500, 9000], first=1) == {1: 2000, 2: 6000}
    # a target past the GOP's last frame waits for the next GOP, unless this is the stream's last
    assert frames_for_targets(gop, [9000], first=0) == {}
    assert frames_for_targets(gop, [9000], first=0, last_gop=True) == {0: 6000}


def test_the_decoder_gets_the_gop_up_to_its_last_wanted_frame():
    gop = [0, 3000, 1000, 2000, 6000, 4000, 5000]
    assert packets_to_feed(gop, {1000}, skip_nonref=True) == [True, True, False]
    assert packets_to_feed(gop, {0, 2000}, skip_nonref=True) == [False, True, True, False]
    assert packets_to_feed(gop, {2000}, skip_nonref=False) == [False, False, False, False]


def test_the_dense_pick_is_the_first_frame_at_or_after_each_time():
    times = [0.0, 0.1, 0.2, 0.3]
    assert nearest_frames(times, [0.05, 0.1, 0.25, 0.9]) == [1, 1, 3, 3]


def test_the_executed_plan_keeps_the_frames_the_plan_names(tmp_path):
    path = tmp_path / "gop.mp4"
    encode_video(path, render_frames(CONCEPTS[2], n_frames=90, size=(128, 96), seed=2), 30, gop=30)
    with open_media(str(path)) as c:
        facts = stream_facts(c)
        vs = c.streams.video[0]
        gops: list[list[int]] = []
        for p in c.demux(vs):
            if p.size:
                if p.is_keyframe or not gops:
                    gops.append([])
                gops[-1].append(p.pts)
    plan = plan_decode(facts, 8)
    expected, first = {}, 0
    for i, gop in enumerate(gops):
        chosen = frames_for_targets(gop, plan.target_pts, first, last_gop=i == len(gops) - 1)
        expected.update(chosen)
        first = max(chosen, default=first - 1) + 1
    tb = facts.time_base
    probed = probe_file(str(path), num_frames=8, short_side=64)
    assert probed.frame_times == [round(expected[i] * tb, 4) for i in range(8)]
    assert probed.decoded_frames < 90, "a sparse plan decodes less than every frame"
