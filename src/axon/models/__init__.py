"""What the front end must know of a model without running it: its name, context window
and tokenizer (to build prompts that fit)."""
