"""The efpn studio (Streamlit). Entry point: ``streamlit run app/streamlit_app.py`` (``make app``)."""
