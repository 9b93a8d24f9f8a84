"""Text-to-speech and speech editing (VoiceCraft): phonemes, word alignment, codec-LM inference."""
