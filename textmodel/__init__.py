"""The PEFT-tuned GPT encoder: backbone loading, towers, training, export (issue 3)."""

__all__: list[str] = []
