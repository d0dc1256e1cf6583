"""The shard writer's tars: reconciling what is published with the manifest."""
