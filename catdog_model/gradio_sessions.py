"""Gradio's session store, made cheap to enter. Every API call is a new Gradio session, and Gradio 6.31 builds
each new session a private config of every component in the app (inspect.signature and api_info for each):
with this app's ~80 blocks that was a third of the server's CPU under load on /predict (py-spy;
docs/benchmarks.md). Here a new session shares one config, built once, and copies a component's entry only when
Gradio first reads or changes it in that session. Nothing else of Gradio's sessions changes."""

from __future__ import annotations

import copy
import os

from gradio.state_holder import SessionState, StateHolder


class CopiedOnUse(dict):
    """A session's config of each component: taken from the shared template, one component at a time, when
    first used; what the session writes stays in the session."""

    def __init__(self, template: dict):
        super().__init__()
        self.template = template

    def __missing__(self, key):
        value = self[key] = copy.deepcopy(self.template[key])
        return value

    def __contains__(self, key) -> bool:
        return dict.__contains__(self, key) or key in self.template

    def keys(self):  # in the template's order (the order Gradio lists components in), then any the session added
        return [*self.template, *(key for key in dict.keys(self) if key not in self.template)]

    def __iter__(self):
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def items(self):
        return [(key, self[key]) for key in self.keys()]

    def values(self):
        return [self[key] for key in self.keys()]


class SharedConfigSession(SessionState):
    """Gradio's SessionState, its components' config copied on use (the attributes are those Gradio's own
    __init__ sets: tests/test_app.py checks that they still are)."""

    def __init__(self, blocks, template: dict):
        self.blocks_config = copy.copy(blocks.default_config)
        self.config_values = CopiedOnUse(template)
        self.state_data = {}
        self._state_ttl = {}
        self.is_closed = False
        self.STATE_TTL_WHEN_CLOSED = 1 if os.getenv("GRADIO_IS_E2E_TEST", None) else 3600


class SharedConfigSessions(StateHolder):
    """StateHolder whose new sessions are SharedConfigSessions; the template is one session's config, built
    by Gradio's own SessionState the first time it is needed."""

    template: dict | None = None

    def __getitem__(self, session_id: str) -> SessionState:
        if session_id not in self.session_data:
            if self.template is None:
                self.template = dict(SessionState(self.blocks).config_values)
            self.session_data[session_id] = SharedConfigSession(self.blocks, self.template)
        return super().__getitem__(session_id)


def share_session_config(blocks) -> None:
    """Make the sessions of blocks, mounted already (Gradio's app and the Blocks both hold its StateHolder),
    start from the shared config."""
    blocks.state_holder.__class__ = SharedConfigSessions
