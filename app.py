"""The Gradio app as a Hugging Face Space or `python app.py` starts it; the wiring is catdog_model/app.py
(`catdog serve` is the same)."""

import sys

from catdog_model.cli import main

if __name__ == "__main__":
    main(["serve", *sys.argv[1:]])
