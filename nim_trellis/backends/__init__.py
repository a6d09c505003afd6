"""Image/text-to-3D backends behind one small interface (`base.Backend3D`)."""
