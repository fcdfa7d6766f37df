"""Gradio sessions that share one config: entered cheaply, and otherwise the sessions Gradio makes."""

from __future__ import annotations

import gradio as gr
from fastapi import FastAPI
from gradio.state_holder import SessionState

from catdog_model.gradio_sessions import SharedConfigSession, share_session_config


def mounted_blocks() -> gr.Blocks:
    with gr.Blocks() as demo:
        text = gr.Textbox(label="text", value="hello")
        counter = gr.State(0)
        gr.Button().click(lambda value, count: (value.upper(), count + 1), [text, counter], [text, counter],
                          api_name="shout")
    gr.mount_gradio_app(FastAPI(), demo, path="/")
    share_session_config(demo)
    return demo


def test_a_new_session_is_what_gradio_would_make_with_its_config_copied_on_use():
    demo = mounted_blocks()
    ours, gradios = demo.state_holder["first"], SessionState(demo)
    assert isinstance(ours, SharedConfigSession)
    # The attributes Gradio's own __init__ sets (a Gradio upgrade that adds one fails here, not in production).
    assert set(vars(ours)) == set(vars(gradios))
    assert dict(ours.config_values.items()) == gradios.config_values
    assert [config["id"] for config in ours.components] == [config["id"] for config in gradios.components]


def test_what_one_session_changes_stays_in_that_session():
    demo = mounted_blocks()
    text = next(block for block in demo.blocks.values() if isinstance(block, gr.Textbox))
    state = next(block for block in demo.blocks.values() if isinstance(block, gr.State))
    first, second = demo.state_holder["first"], demo.state_holder["second"]
    first._update_value_in_config(text._id, "changed")
    first[state._id] = 5
    assert first.config_values[text._id]["props"]["value"] == "changed"
    assert second.config_values[text._id]["props"]["value"] == "hello"
    assert demo.state_holder["third"].config_values[text._id]["props"]["value"] == "hello"
    assert first[state._id] == 5 and second[state._id] == 0
