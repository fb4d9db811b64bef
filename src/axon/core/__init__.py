"""Pure types shared by every role: messages, jobs, stream events, errors, ids. No I/O."""
