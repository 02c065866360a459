"""MOS listening tests: YAML definition, Gradio panel, SQLite ratings store, report with intervals."""
