"""Input: the embedded data set, tokenizer and tf.data pipeline."""
