"""Text-to-image: SANA-Sprint through diffusers (`sana`) and its tiny offline stand-in (`tiny`)."""
