"""What a run leaves behind: run files (CSV/JSON, atomic writes, resume truncation), the wandb mirror
(tracking) and the export back from wandb."""
