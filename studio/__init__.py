"""The studio UI's logic: service clients, planner, workspace, export and the Gradio layout. Never imports torch."""
