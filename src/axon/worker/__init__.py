"""The inference worker: takes jobs from the queue, runs them on an engine, streams tokens."""
