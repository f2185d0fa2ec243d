"""The efpn studio (Streamlit). Entry point: ``python -m app`` (``make app``); ``streamlit run app/streamlit_app.py``
serves the same pages."""
