"""Retraining from the app, the server's side: the server never imports TensorFlow and keeps serving at its own
memory while a child (catdog_model.retrain_job) trains, publishes, compares and reports. Retrainer starts one
child at a time, follows its lines, and hears how it ended. It prepares after the server starts and after each
change of production; a retraining that starts ends a preparation (what it embedded is kept). The last
retraining's state is kept in the data folder, so a restart shows it again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Callable

from .atomic import write_atomically
from .config import PROJECT_ROOT, Settings
from .finetune import FineTuneConfig
from .retrain_job import CONFIG_VARIABLE, PARENT_VARIABLE, SETTINGS_VARIABLE, RetrainConfig
from .scores import are_scores

logger = logging.getLogger(__name__)
LAST_RETRAINING_FILE = "last_retraining.json"


@dataclasses.dataclass
class RetrainState:
    running: bool = False
    stage: str = "idle"
    done: int = 0
    total: int = 0
    log: list[str] = dataclasses.field(default_factory=list)
    result: dict | None = None
    error: str | None = None
    started_at: float | None = None  # time.time() of the start, and of the current stage's start
    stage_started_at: float | None = None
    finished_at: float | None = None
    stage_first_done: int | None = None  # how far the stage was when this part of it began (a stage may resume)

    def seconds_left(self, now: float) -> float | None:
        """The current stage's time left, from its pace so far; None before there is a pace to go by."""
        first = self.stage_first_done or 0
        if not (self.running and self.stage_started_at and self.total and first < self.done < self.total):
            return None
        return (now - self.stage_started_at) / (self.done - first) * (self.total - self.done)

    def stage_changed(self, stage: str, now: float) -> None:
        self.stage, self.stage_started_at, self.done, self.total, self.stage_first_done = stage, now, 0, 0, None

    def progressed(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        if self.stage_first_done is None:
            self.stage_first_done = done


# The server's side.

class Retrainer:
    """One retraining child at a time; on_result(result) runs in the server when a child succeeds."""

    def __init__(self, settings: Settings, on_result: Callable[[dict], None],
                 config: RetrainConfig = RetrainConfig()):
        self.settings = settings
        self.on_result = on_result
        self.config = config
        self.state = self._kept()  # the last retraining, as the data folder keeps it across restarts
        self.process: subprocess.Popen | None = None
        self.preparation = RetrainState()  # the latest preparation of embeddings, in the background
        self.preparer: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def start(self, fine_tune: bool = False) -> bool:
        """False if a retraining is already running. fine_tune: the backbone's top too (minutes), with
        self.config's fine-tuning recipe (FineTuneConfig's defaults where it has none). A preparation that is
        running ends first."""
        plan = dataclasses.replace(self.config, fine_tuning=(self.config.fine_tuning or FineTuneConfig())
                                   if fine_tune else None)
        with self._lock:
            if self.state.running:
                return False
            self._end(self.preparer)
            now = time.time()
            self.state = RetrainState(running=True, stage="starting", log=["Retraining started."], started_at=now,
                                      stage_started_at=now)
            self.process = self._spawn([], plan)
        threading.Thread(target=self._follow, args=(self.process, self.state, self._finish_retraining),
                         name="retrain-follow", daemon=True).start()
        return True

    def prepare(self) -> bool:
        """Embed the next retraining's photos with production's backbone, in the background, ending a
        preparation for an earlier production first; False (nothing started) while a retraining runs."""
        with self._lock:
            if _alive(self.process):
                return False
            self._end(self.preparer)
            now = time.time()
            self.preparation = RetrainState(running=True, stage="starting", started_at=now, stage_started_at=now)
            self.preparer = self._spawn(["prepare"], self.config)
        threading.Thread(target=self._follow, args=(self.preparer, self.preparation, self._finish_preparation),
                         name="prepare-follow", daemon=True).start()
        return True

    def _spawn(self, arguments: list[str], plan: RetrainConfig) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "catdog_model.retrain_job", *arguments], cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(PROJECT_ROOT),
                                                                            os.environ.get("PYTHONPATH")))),
                 SETTINGS_VARIABLE: self.settings.to_json(),
                 CONFIG_VARIABLE: plan.to_json(), PARENT_VARIABLE: str(os.getpid())})

    def _follow(self, process: subprocess.Popen, state: RetrainState,
                finish: Callable[[subprocess.Popen, RetrainState, int, list[str]], None]) -> None:
        stderr: list[str] = []
        reader = threading.Thread(target=lambda: stderr.extend(process.stderr), daemon=True)
        reader.start()
        for line in process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if not isinstance(message, dict):  # a stray line from a library: not the child's protocol
                continue
            if "stage" in message:
                if message["stage"] != state.stage:
                    total = message.get("total")
                    stage = message["stage"]
                    state.log.append(stage[:1].upper() + stage[1:] + (f": {total:,} to do" if total else "…"))
                    state.stage_changed(message["stage"], time.time())
                state.progressed(message.get("done", 0), message.get("total", 0))
            state.log.extend([message["log"]] if "log" in message else [])
            state.error = message.get("error", state.error)
            state.result = message.get("result", state.result)
        code = process.wait()
        reader.join(timeout=5)
        finish(process, state, code, stderr)
        state.finished_at = time.time()
        state.running = False

    def _finish_retraining(self, process: subprocess.Popen, state: RetrainState, code: int,
                           stderr: list[str]) -> None:
        if code == 0 and state.result:
            try:
                self.on_result(state.result)
                state.stage = "done"
            except Exception as error:  # a promotion that fails is reported like a failed retraining
                state.error, state.stage = str(error), "failed"
        else:
            if code < 0:
                state.error = f"The retraining process was stopped by signal {signal.Signals(-code).name}."
            elif not state.error:
                state.error = f"The retraining process failed (exit code {code})."
            state.stage = "failed"
            logger.warning("retraining failed: %s %s", state.error, "".join(stderr[-20:]).strip())
        state.log.append(f"Failed: {state.error}" if state.stage == "failed" else "Finished.")
        self._keep(dataclasses.replace(state, running=False, finished_at=time.time()))

    def _finish_preparation(self, process: subprocess.Popen, state: RetrainState, code: int,
                            stderr: list[str]) -> None:
        if code == 0:
            state.stage = "done"
        elif getattr(process, "ended_by_us", False):
            state.stage = "stopped"  # a retraining took over; what was embedded is kept
        else:
            state.stage, state.error = "failed", state.error or f"exit code {code}"
            logger.warning("preparing the next retraining's embeddings failed: %s %s", state.error,
                           "".join(stderr[-20:]).strip())

    def _keep(self, state: RetrainState) -> None:
        """The finished retraining, kept in the data folder: a reload or a restart shows it again."""
        try:
            write_atomically(self.settings.data_dir / LAST_RETRAINING_FILE,
                             json.dumps(dataclasses.asdict(state), indent=1).encode())
        except OSError as error:
            logger.warning("the last retraining's result could not be kept: %s", error.strerror)

    def _kept(self) -> RetrainState:
        """The last retraining kept in the data folder, as it ended; idle when there is none, or when what is
        there is not a retraining's state."""
        path = self.settings.data_dir / LAST_RETRAINING_FILE
        if not path.is_file():
            return RetrainState()
        try:
            kept = json.loads(path.read_text())
            state = RetrainState(**{field.name: kept[field.name] for field in dataclasses.fields(RetrainState)
                                    if field.name in kept})
            valid = (isinstance(state.stage, str) and isinstance(state.log, list)
                     and all(isinstance(line, str) for line in state.log)
                     and (state.result is None or (isinstance(state.result.get("version"), str) and all(
                         state.result.get(side) is None or are_scores(state.result[side])
                         for side in ("candidate", "production"))))
                     and all(isinstance(value, (int, float, type(None))) for value in
                             (state.done, state.total, state.started_at, state.finished_at)))
            if valid:
                return dataclasses.replace(state, running=False)  # its process ended with the server that ran it
        except (OSError, ValueError, TypeError, AttributeError) as error:
            logger.warning("the last retraining's result could not be read: %s", error)
            return RetrainState()
        logger.warning("the last retraining's result in %s is not a retraining's state; it is not shown", path)
        return RetrainState()

    def last(self) -> RetrainState:
        """The current retraining's state; before one has run since this server started, the last one kept."""
        return self.state

    def stop(self) -> None:
        """End the running children (the server is shutting down)."""
        for process in (self.process, self.preparer):
            self._end(process)

    @staticmethod
    def _end(process: subprocess.Popen | None) -> None:
        if _alive(process):
            process.ended_by_us = True
            process.kill()
            process.wait(timeout=30)


def _alive(process: subprocess.Popen | None) -> bool:
    return process is not None and process.poll() is None

