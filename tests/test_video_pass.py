"""Plain video chains made by the ffmpeg program alone (imgq.imaging.video_pass): the
same frames as the frame loop keeps, the poster from the same decode as sampling by
seeking picks it, and chunks whose candidates give the join that very poster."""

from __future__ import annotations

import os

import numpy as np
import pytest

from imgq.imaging import video, video_chunks, video_encode, video_pass
from imgq.samples import video as clips
from test_video import read_video

needs_ffmpeg = pytest.mark.skipif(not clips.have_ffmpeg(), reason="needs the ffmpeg and ffprobe programs (apt-get install ffmpeg)")


def _open(path):
    return os.open(path, os.O_RDONLY)


@needs_ffmpeg
def test_a_plain_chain_keeps_the_frames_the_frame_loop_keeps(tmp_path):
    # 100 distinct frames at 50 fps; the range 0.3-1.7 s (frames 15..84) thinned to 20 fps
    clip = clips.make_clip(tmp_path / "in.avi", width=320, height=240, frames=100, fps=50)
    chain = "video:size=160x160,fps=20,start=0.3,end=1.7"
    fd = _open(clip)
    try:
        assert video_encode._plain({"v": chain}, "ffmpeg") and not video_encode._plain({"v": chain + "|brightness=1"}, "ffmpeg")
        plain = video_encode.encode_video(fd, "in.avi", chain, lambda ext: tmp_path / f"plain.{ext}")
        loop = video_encode.encode_video(fd, "in.avi", chain + "|brightness=1", lambda ext: tmp_path / f"loop.{ext}")  # a step: the frame loop
    finally:
        os.close(fd)
    assert (plain.frames, plain.width, plain.height, plain.duration) == (loop.frames, loop.width, loop.height, loop.duration) == (28, 160, 120, 1.4)
    n1, fps1, size1, a = read_video(tmp_path / "plain.mp4")
    n2, fps2, size2, b = read_video(tmp_path / "loop.mp4")
    assert (n1, fps1, size1) == (n2, fps2, size2) == (28, 20.0, (160, 120))
    for i, frame in enumerate(a):  # frame i of one is frame i of the other, not a neighbour
        near = range(max(0, i - 1), min(len(b), i + 2))
        diffs = {k: np.abs(frame.astype(int) - b[k].astype(int)).mean() for k in near}
        assert min(diffs, key=diffs.get) == i, (i, diffs)


@needs_ffmpeg
def test_the_poster_from_the_one_pass_is_the_sampled_frame_with_most_detail_and_chunks_pick_the_same(tmp_path):
    # opens on 30 black frames: the first samples (5, 15, 25) cannot be the poster
    clip = clips.make_clip(tmp_path / "in.avi", width=320, height=240, frames=80, fps=20, black_frames=30)
    fd = _open(clip)
    try:
        made, poster = video_encode.encode_videos_and_poster(fd, "in.avi", {"preview": "preview"}, lambda art, ext: tmp_path / f"{art}.{ext}")
        seeking = video.poster_frame(fd, "in.avi")  # each sample decoded after a seek
        parts, candidates = [], []
        for i in range(3):
            parts.append(tmp_path / f"part{i}.vpart")
            candidates.append(tmp_path / f"poster{i}.vpart")
            video_chunks.encode_chunks(fd, "in.avi", {"preview": "preview"}, i, 3, lambda art, i=i: parts[i], poster_dest=candidates[i])
        joined = video_chunks.join_chunks(fd, "in.avi", "preview", parts, lambda ext: tmp_path / f"joined.{ext}")
    finally:
        os.close(fd)
    assert made["preview"].frames == joined.frames == 80
    assert poster is not None and poster.size == seeking.size == (320, 240)
    got, want = np.asarray(poster, dtype=int), np.asarray(seeking, dtype=int)
    assert np.abs(got - want).mean() < 1.0  # the same frame, decoded once rather than after a seek
    assert got.mean() > 60  # not one of the black ones
    picked = video_pass.pick_poster(candidates)
    assert np.array_equal(np.asarray(picked), np.asarray(poster))  # the join's poster is the one pass's, to the pixel
    # a chunk made without its candidate (the frame loop made it): the join samples the poster itself
    assert video_pass.pick_poster([*candidates[:2], tmp_path / "missing.vpart"]) is None


def test_workers_share_the_cores_among_their_video_threads():
    from imgq.work import video_threads

    cores = len(os.sched_getaffinity(0))
    assert video_threads(1) == cores  # one worker: every core for its ffmpeg
    assert video_threads(cores) == 1  # -j N on N cores: one thread each
    assert video_threads(4 * cores) == 1


@needs_ffmpeg
def test_chunk_zero_encodes_the_audio_and_the_join_copies_it(tmp_path):
    from test_video import ffprobe_streams, stream_facts

    clip = clips.make_clip_ffmpeg(tmp_path / "in.mp4", width=320, height=240, seconds=3, fps=25)
    fd = _open(clip)
    try:
        whole = video_encode.encode_video(fd, "in.mp4", "preview", lambda ext: tmp_path / f"whole.{ext}")
        parts = [tmp_path / f"part{i}.vpart" for i in range(2)]
        for i in range(2):
            video_chunks.encode_chunks(fd, "in.mp4", {"preview": "preview"}, i, 2, lambda art, i=i: parts[i],
                                       audio_dest=(lambda art: tmp_path / f"{art}.audio") if i == 0 else None)
        assert (tmp_path / "preview.audio").stat().st_size > 0
        copied = video_chunks.join_chunks(fd, "in.mp4", "preview", parts, lambda ext: tmp_path / f"copied.{ext}", audio=tmp_path / "preview.audio")
        encoded = video_chunks.join_chunks(fd, "in.mp4", "preview", parts, lambda ext: tmp_path / f"encoded.{ext}")  # no audio part: from the original
    finally:
        os.close(fd)
    assert whole.frames == copied.frames == encoded.frames == 75 and copied.encoder == encoded.encoder == "ffmpeg libx264/aac mp4, joined from chunks"
    assert stream_facts(tmp_path / "copied.mp4") == stream_facts(tmp_path / "whole.mp4")

    def audio(path):
        [a] = [s for s in ffprobe_streams(path)["streams"] if s["codec_type"] == "audio"]
        return a["codec_name"], float(a["duration"])

    (codec, seconds), (codec2, seconds2) = audio(tmp_path / "copied.mp4"), audio(tmp_path / "whole.mp4")
    assert codec == codec2 == "aac" and seconds == pytest.approx(seconds2, abs=0.05) and seconds == pytest.approx(3.0, abs=0.1)
