"""Self-training by data distillation: a teacher trained on weak labels labels the pixels and tiles they leave open
(its softmax averaged over the D4 transforms, kept where confident), and a student trains from scratch on the union.

`pseudo` holds the pure core (one tile's labels from given labels and teacher probabilities); `stage` is
`eqseg distill`, the pipeline stage between the teacher's and the student's training.
"""
