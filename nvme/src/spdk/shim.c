/* A thin C layer over SPDK so that Rust never mirrors SPDK's struct layouts, which change
 * between releases. Every function returns 0 or a negative errno. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "spdk/env.h"
#include "spdk/nvme.h"

struct hs_completion {
    volatile int32_t done;   /* set to 1 by the callback */
    volatile int32_t status; /* 0 on success, -EIO on an NVMe error */
};

struct hs_ctrlr {
    struct spdk_nvme_ctrlr *ctrlr;
    struct spdk_nvme_ns *ns;
};

int hs_spdk_env_init(const char *name, const char *core_mask, int mem_size_mb) {
    struct spdk_env_opts opts;
    spdk_env_opts_init(&opts);
    opts.name = name;
    if (core_mask) opts.core_mask = core_mask;
    if (mem_size_mb > 0) opts.mem_size = mem_size_mb;
    return spdk_env_init(&opts) < 0 ? -EIO : 0;
}

/* Attaches the controller at `traddr` (a PCIe address such as 0000:01:00.0) and opens
 * namespace `nsid`. */
int hs_spdk_attach(const char *traddr, uint32_t nsid, struct hs_ctrlr *out) {
    struct spdk_nvme_transport_id trid;
    memset(&trid, 0, sizeof(trid));
    spdk_nvme_trid_populate_transport(&trid, SPDK_NVME_TRANSPORT_PCIE);
    snprintf(trid.traddr, sizeof(trid.traddr), "%s", traddr);
    struct spdk_nvme_ctrlr *ctrlr = spdk_nvme_connect(&trid, NULL, 0);
    if (!ctrlr) return -ENODEV;
    struct spdk_nvme_ns *ns = spdk_nvme_ctrlr_get_ns(ctrlr, nsid);
    if (!ns || !spdk_nvme_ns_is_active(ns)) {
        spdk_nvme_detach(ctrlr);
        return -ENOENT;
    }
    out->ctrlr = ctrlr;
    out->ns = ns;
    return 0;
}

void hs_spdk_detach(struct hs_ctrlr *c) {
    if (c->ctrlr) spdk_nvme_detach(c->ctrlr);
    c->ctrlr = NULL;
    c->ns = NULL;
}

uint64_t hs_spdk_ns_size(const struct hs_ctrlr *c) { return spdk_nvme_ns_get_size(c->ns); }
uint32_t hs_spdk_sector_size(const struct hs_ctrlr *c) { return spdk_nvme_ns_get_sector_size(c->ns); }

struct spdk_nvme_qpair *hs_spdk_alloc_qpair(struct hs_ctrlr *c) {
    return spdk_nvme_ctrlr_alloc_io_qpair(c->ctrlr, NULL, 0);
}

void hs_spdk_free_qpair(struct spdk_nvme_qpair *q) { spdk_nvme_ctrlr_free_io_qpair(q); }

static void hs_on_complete(void *arg, const struct spdk_nvme_cpl *cpl) {
    struct hs_completion *c = arg;
    c->status = spdk_nvme_cpl_is_error(cpl) ? -EIO : 0;
    c->done = 1;
}

int hs_spdk_read(struct hs_ctrlr *c, struct spdk_nvme_qpair *q, void *buf, uint64_t lba,
                 uint32_t lba_count, struct hs_completion *done) {
    return spdk_nvme_ns_cmd_read(c->ns, q, buf, lba, lba_count, hs_on_complete, done, 0);
}

int hs_spdk_write(struct hs_ctrlr *c, struct spdk_nvme_qpair *q, void *buf, uint64_t lba,
                  uint32_t lba_count, int fua, struct hs_completion *done) {
    uint32_t flags = fua ? SPDK_NVME_IO_FLAGS_FORCE_UNIT_ACCESS : 0;
    return spdk_nvme_ns_cmd_write(c->ns, q, buf, lba, lba_count, hs_on_complete, done, flags);
}

int hs_spdk_flush(struct hs_ctrlr *c, struct spdk_nvme_qpair *q, struct hs_completion *done) {
    return spdk_nvme_ns_cmd_flush(c->ns, q, hs_on_complete, done);
}

int32_t hs_spdk_poll(struct spdk_nvme_qpair *q) { return spdk_nvme_qpair_process_completions(q, 0); }

void *hs_spdk_dma_alloc(size_t size, size_t align) { return spdk_dma_zmalloc(size, align, NULL); }
void hs_spdk_dma_free(void *p) { spdk_dma_free(p); }
