"""QNeoGen stage 1a: the fold's VQ-VAE (``neonet_train DATASET vqvae FOLD``), Table 3's alternative to the VAE.

MONAI ``VQVAE`` (EMA codebook) on the same data as the VAE: channel 0 of the TLCR patches of the fold's
training cases, with the same intensity mapping. Loss ``L1(x̂, x) + commitment_cost · ||z - sg(e)||²``
(the commitment term comes from MONAI's quantiser; the codebook itself is updated by EMA). Codebook size,
embedding dimension, commitment cost and EMA decay come from the plans' ``vqvae`` stage.

Codebook collapse is the classic VQ failure, so every validation epoch logs the codebook usage over the
training patches (``codebook_perplexity``: exp of the code entropy, ``num_embeddings`` at uniform use and 1
at collapse; ``codebook_dead_codes``: codes no training latent maps to), and the final checkpoint stores it
in ``extra["codebook"]``. With the plans' ``codebook_restart`` (on in both presets), every code that no
training latent maps to is re-seeded, before each epoch, with a randomly chosen encoder output of the
training patches (the usual dead-code restart; before epoch 0 this is a data-dependent codebook
initialisation). Measured on the phantom: without it MONAI's N(0, 1) codebook collapses to 1 of 64
codes within the first epoch (encoder outputs are far smaller than the initial codes). After the last epoch the latent ``scale_factor = 1 / std(e)`` of the quantised
embeddings is stored, as for the VAE, so the LDM / ControlNet stages train on either autoencoder
(``--autoencoder vqvae``).
"""
from __future__ import annotations

import logging

import torch

from neonet_toolkit.networks.generative import VQVAETrainStep, build_vqvae, codebook_usage
from neonet_toolkit.training.gen_common import add_gen_arguments, common_kwargs
from neonet_toolkit.training.vae import VAETrainer

logger = logging.getLogger(__name__)


class VQVAETrainer(VAETrainer):
    stage = "vqvae"

    def build_network(self) -> None:
        self.network = build_vqvae(self.config).to(self.device)
        self.step_module = VQVAETrainStep(self.network)
        self.codebook = None

    def latent_mean(self, x: torch.Tensor) -> torch.Tensor:
        return self.network.encode_stage_2_inputs(x)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.network.decode_stage_2_outputs(self.network.encode(x))

    @torch.no_grad()
    def encoder_outputs(self) -> torch.Tensor:
        """(N, embedding_dim) encoder outputs of every training patch (all ranks: the same, so DDP stays in sync)."""
        self.network.eval()
        z = [self.network.encode(self.x_train[s:s + 4].to(self.device)).float() for s in range(0, len(self.x_train), 4)]
        z = torch.cat(z)
        return z.movedim(1, -1).reshape(-1, z.shape[1])

    @torch.no_grad()
    def restart_dead_codes(self, epoch: int) -> int:
        """Re-seed unused codes with random training encoder outputs (EMA state set to match); returns how many."""
        q = self.network.quantizer.quantizer  # MONAI's EMAQuantizer: embedding, ema_w, ema_cluster_size
        flat = self.encoder_outputs()
        d = torch.cdist(flat, q.embedding.weight.float())
        counts = torch.bincount(d.argmin(1).cpu(), minlength=q.num_embeddings)
        dead = (counts == 0).nonzero().reshape(-1)
        if len(dead) == 0:
            return 0
        gen = torch.Generator().manual_seed(int(self.seed) * 7919 + int(epoch))
        pick = torch.randint(0, flat.shape[0], (len(dead),), generator=gen)
        new = flat[pick.to(flat.device)].to(q.embedding.weight.dtype)
        q.embedding.weight.data[dead] = new
        q.ema_w.data[dead] = new
        q.ema_cluster_size.data[dead] = 1.0  # embedding = ema_w / (smoothed cluster size ≈ 1) = the new vector
        return int(len(dead))

    def train_epoch(self, epoch: int) -> dict:
        restarted = self.restart_dead_codes(epoch) if self.config["codebook_restart"] else 0
        return {**super().train_epoch(epoch), "codes_restarted": float(restarted)}

    def compute_loss(self, idx, gen, train):
        x = (self.x_train if train else self.x_val)[idx].to(self.device)
        recon, q_loss = self.run_model(x)
        l1 = torch.nn.functional.l1_loss(recon.float(), x)
        loss = l1 + q_loss.float()
        return loss, {"l1": l1.detach(), "commitment": q_loss.detach()}

    @torch.no_grad()
    def compute_codebook_usage(self) -> dict:
        self.network.eval()
        idx = [self.network.index_quantize(self.x_train[s:s + 4].to(self.device)).cpu()
               for s in range(0, len(self.x_train), 4)]
        return codebook_usage(torch.cat([i.reshape(-1) for i in idx]), int(self.config["num_embeddings"]))

    def validate(self, epoch: int) -> dict:
        out = super().validate(epoch)
        if "val_loss" in out:
            self.codebook = self.compute_codebook_usage()
            out.update({"codebook_perplexity": self.codebook["perplexity"],
                        "codebook_dead_codes": float(self.codebook["dead_codes"])})
            if self.codebook["used_fraction"] < 0.1:
                self.log("WARNING: codebook collapse: %d of %d codes used (perplexity %.2f)",
                         self.codebook["num_embeddings"] - self.codebook["dead_codes"],
                         self.codebook["num_embeddings"], self.codebook["perplexity"])
        return out

    def extra_state(self) -> dict:
        return {**super().extra_state(), "codebook": dict(self.codebook or {})}

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        if state.get("codebook"):
            self.codebook = dict(state["codebook"])

    def finish(self) -> None:
        self.codebook = self.compute_codebook_usage()
        self.log("scale_factor=%.6g latent_shape=%s codebook: perplexity %.2f of %d codes, %d dead",
                 self.scale_factor or 1.0, self.latent_shape, self.codebook["perplexity"],
                 self.codebook["num_embeddings"], self.codebook["dead_codes"])


def add_arguments(parser) -> None:
    add_gen_arguments(parser)


def train_from_args(args):
    return VQVAETrainer(**common_kwargs(args)).run()
