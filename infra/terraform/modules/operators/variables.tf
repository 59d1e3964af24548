# The operators take no input: their versions are pinned in main.tf.
