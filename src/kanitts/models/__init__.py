"""Model classes kanitts trains and runs beside transformers' own: KaniTTS-2 and its speaker embedder."""
