"""The Gradio app as a Hugging Face Space or `python app.py` starts it; the wiring is catdog_model/app.py
(`catdog serve` is the same)."""

from catdog_model.app import main

if __name__ == "__main__":
    main()
