"""The chaos harness: private datastores, a stack of real axon processes, a workload of
streamed conversations, and a checker that compares what clients saw with what was stored."""
