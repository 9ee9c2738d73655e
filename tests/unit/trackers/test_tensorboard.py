"""A run's TensorBoard files, read back with tensorboard's own EventAccumulator: the scalars at their steps and
times, the config as text and HParams, the findings and the end as text; written again, the run shows once."""
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from training.trackers.points import MIB, FindingNote, Point, RunEnd
from training.trackers.tensorboard import TensorBoardWriter, write_run


def read(log_dir) -> EventAccumulator:
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def texts(accumulator: EventAccumulator, tag: str) -> list[tuple[int, str]]:
    return [(e.step, e.tensor_proto.string_val[0].decode()) for e in accumulator.Tensors(tag)]


CONFIG = {"model": "tiny", "r": 16, "learning_rate": 0.0002, "use_rslora": False, "target_modules": ["q_proj"],
          "max_steps": None}


def test_a_run_reads_back_with_its_scalars_config_findings_and_end(tmp_path):
    points = [Point(step=s, time=1700000000.0 + s, values={"loss": 2.0 / s, "grad_norm": 0.5 * s,
                                                           "learning_rate": 2e-4, "tokens_per_s": 1000.0 + s,
                                                           "peak_vram_bytes": 3 * MIB * s}) for s in range(1, 6)]
    points.append(Point(step=5, time=1700000005.5, values={"eval_loss": 1.5}))
    write_run(tmp_path, config=CONFIG, title="#7 demo", points=points,
              findings=[FindingNote(step=3, code="flat_loss", title="Loss is flat", message="raise the rate",
                                    parameters=("learning_rate",))],
              notes=[("warnings", "`trackers` MLflow: down", 0)], end=RunEnd(status="succeeded", step=5),
              start_time=1700000000.0)
    board = read(tmp_path)
    assert set(board.Tags()["scalars"]) == {"train/loss", "eval/loss", "train/grad_norm", "train/learning_rate",
                                            "perf/tokens_per_s", "perf/peak_vram_mib"}
    loss = board.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2, 3, 4, 5]
    assert [round(e.value, 6) for e in loss] == [round(2.0 / s, 6) for s in range(1, 6)]  # float32 in the file
    assert [e.wall_time for e in loss] == [1700000000.0 + s for s in range(1, 6)]
    assert [(e.step, e.value) for e in board.Scalars("eval/loss")] == [(5, 1.5)]
    assert [e.value for e in board.Scalars("perf/peak_vram_mib")] == [3.0, 6.0, 9.0, 12.0, 15.0]
    ((step, config),) = texts(board, "config")
    assert step == 0 and "# #7 demo" in config and "| learning_rate | `0.0002` |" in config
    assert '| target_modules | `["q_proj"]` |' in config and "| max_steps | `null` |" in config
    assert texts(board, "findings") == [
        (3, "**Loss is flat** (flat_loss at step 3): raise the rate Look at: learning_rate.")]
    assert texts(board, "warnings") == [(0, "`trackers` MLflow: down")]
    assert texts(board, "status") == [(5, "succeeded at step 5")]
    hparams = board.summary_metadata["_hparams_/session_start_info"].plugin_data.content
    info = plugin_data_pb2.HParamsPluginData.FromString(hparams).session_start_info
    assert info.hparams["r"].number_value == 16 and info.hparams["model"].string_value == "tiny"
    assert info.hparams["use_rslora"].bool_value is False and info.hparams["max_steps"].string_value == "null"
    assert info.hparams["target_modules"].string_value == '["q_proj"]'


def test_written_again_the_run_shows_once(tmp_path):
    for _ in range(2):
        write_run(tmp_path, config=CONFIG, title="#7", points=[Point(step=1, time=1.0, values={"loss": 1.0})],
                  findings=[], notes=[], end=None)
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1
    assert [e.step for e in read(tmp_path).Scalars("train/loss")] == [1]


def test_the_live_writer_flushes_what_it_has_on_close(tmp_path):
    writer = TensorBoardWriter(tmp_path / "tensorboard", flush_secs=120)
    writer.open(CONFIG)
    writer.points([Point(step=s, time=float(s), values={"loss": float(s)}) for s in (1, 2)])
    writer.close()
    assert [e.value for e in read(tmp_path / "tensorboard").Scalars("train/loss")] == [1.0, 2.0]
