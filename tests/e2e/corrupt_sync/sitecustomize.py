"""Test-only fault injection for tests/e2e/test_grpo_cluster.py (on PYTHONPATH only there, so it reaches the
learner processes Ray starts): once `cluster.rollout` is imported, its object-store `_put` changes a tensor of
the first bucket of the first weight sync after the learner took its checksums, as a corrupted transfer would."""

import importlib.abc
import sys


class _AfterImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "cluster.rollout":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        exec_module = spec.loader.exec_module

        def patched(module):
            exec_module(module)
            real, calls = module._put, []

            def corrupting_put(bucket):
                calls.append(1)
                if len(calls) == 1:
                    name = list(bucket)[-1]  # not the first: lm_head.weight is tied to the embeddings, whose
                    # intact copy, loaded after it into the same storage, would undo the change
                    bucket = {**bucket, name: bucket[name].clone().fill_(0.5)}
                return real(bucket)

            module._put = corrupting_put

        spec.loader.exec_module = patched
        return spec


import importlib.util  # noqa: E402

sys.meta_path.insert(0, _AfterImport())
