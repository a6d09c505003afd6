"""The 3D service: TRELLIS NIM-compatible image/text-to-3D, a job queue, text-to-image and safety classifiers."""
