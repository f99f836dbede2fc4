"""A small CUDA-style greedy-decoding inference server (test program for the --apply behaviour test)."""
import json
import sys

import torch
from torch.cuda.amp import autocast

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


class TinyLM(torch.nn.Module):
    def __init__(self, vocab=32, dim=24):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, dim)
        self.mix = torch.nn.Linear(dim, dim)
        self.head = torch.nn.Linear(dim, vocab)

    def forward(self, ids):
        h = self.emb(ids).cumsum(1)
        return self.head(torch.tanh(self.mix(h)))


class Server:
    def __init__(self):
        torch.manual_seed(1)
        self.device = torch.device(DEVICE)
        self.model = TinyLM().to(self.device).eval()
        self.stream = torch.cuda.Stream()

    @torch.inference_mode()
    def generate(self, prompt, max_new):
        ids = torch.tensor(prompt, device=self.device)[None]
        with torch.cuda.stream(self.stream):
            with autocast(dtype=torch.bfloat16):
                for _ in range(max_new):
                    logits = self.model(ids)[:, -1].float()
                    ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], 1)
        torch.cuda.synchronize()
        return ids[0].tolist()

    def health(self):
        return {"device": str(self.device), "name": torch.cuda.get_device_name(0),
                "peak": torch.cuda.max_memory_allocated(), "gpus": torch.cuda.device_count()}


if __name__ == "__main__":
    srv = Server()
    reply = {"tokens": srv.generate([1, 2, 3], 6), "health": srv.health()}
    with open(sys.argv[1], "w") as fh:
        json.dump(reply, fh)
