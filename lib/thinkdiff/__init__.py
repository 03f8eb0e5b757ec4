"""thinkdiff: what does reasoning distillation change inside a language model?"""
