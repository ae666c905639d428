from pathlib import Path
from xaas_client import Client
with Client() as xaas:  # $XAAS_URL, else http://127.0.0.1:8000
    print(xaas.predict("shapes/00000.png").predictions)
    Path("heatmap.png").write_bytes(xaas.explain("gradcam", "shapes/00000.png").explanations[0].heatmap_png())
